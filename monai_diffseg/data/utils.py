# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Helpers shared by the data modules."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.config import PathLike

__all__ = [
    "MAX_LISTED",
    "check_dir",
    "check_labels_option",
    "check_pairs",
    "describe_case",
    "format_names",
    "index_by_case",
    "subfolders",
]

logger = logging.getLogger(__name__)


def describe_case(item: Any, index: int) -> tuple[str, list[str]]:
    """``(case, files)`` of the data-list ``item`` at ``index`` (e.g. ``{"image": path, "case": "ISIC_0000000"}``),
    for error reports: the ``"case"`` value, else the first file's name without extension, else ``"item <index>"``."""
    if not isinstance(item, Mapping):
        return f"item {index}", []
    files = [str(v) for k, v in item.items() if k != "case" and isinstance(v, (str, os.PathLike))]
    case = item.get("case")
    if case is None:
        case = os.path.splitext(os.path.basename(files[0]))[0] if files else f"item {index}"
    return str(case), files


MAX_LISTED = 5


def check_dir(path: PathLike, what: str) -> str:
    """``path`` as an absolute string; ``FileNotFoundError`` naming it as ``what`` if it is not a folder."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: '{path}' does not exist or is not a folder.")
    return path


def format_names(names: Sequence[str]) -> str:
    """The first few names plus a total count, for messages."""
    more = ", ..." if len(names) > MAX_LISTED else ""
    return f"{', '.join(names[:MAX_LISTED])}{more} ({len(names)} in total)"


def index_by_case(folder: str, case_of: Callable[[str], str | None], what: str, kind: str) -> dict[str, str]:
    """Map case id -> path for the files of ``folder`` (sorted) that ``case_of`` names (``None``: ignored);
    ``ValueError`` for a case with two files, named ``f"{what} '{case}' has more than one {kind}"``."""
    index: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        case = case_of(name)
        if case is None or not os.path.isfile(os.path.join(folder, name)):
            continue
        if case in index:
            raise ValueError(
                f"{what} '{case}' has more than one {kind} in '{folder}': "
                f"'{os.path.basename(index[case])}' and '{name}'; keep exactly one."
            )
        index[case] = os.path.join(folder, name)
    return index


def check_pairs(missing: Sequence[tuple[str, str]], orphans: Sequence[str], mask_dir: str) -> None:
    """``ValueError`` for the images without masks (``(image file name, expected mask path)``); log the orphan masks."""
    if missing:
        raise ValueError(
            f"No mask found for image(s) {format_names([name for name, _ in missing])} in mask folder '{mask_dir}'; "
            f"e.g. expected '{missing[0][1]}' for '{missing[0][0]}'. Pass labels=False to list images only."
        )
    if orphans:  # harmless, but usually a sign of a partial download
        logger.warning(
            "Ignoring %d mask(s) without an image in '%s': %s", len(orphans), mask_dir, format_names(orphans)
        )


def check_labels_option(labels: Any) -> None:
    """``ValueError`` unless ``labels`` is one of the data-list builders' options ``True``, ``False``, ``"auto"``."""
    if labels not in (True, False, "auto"):
        raise ValueError(f"labels must be True, False or 'auto', got {labels!r}.")


def subfolders(folder: str) -> list[str]:
    """Paths of the visible sub-folders of ``folder``, sorted by name: hidden folders and macOS ``__MACOSX`` trees
    skipped; ``[]`` when ``folder`` cannot be listed (missing, no permission)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [e.path for e in entries if e.is_dir() and not e.name.startswith((".", "__MACOSX"))]
