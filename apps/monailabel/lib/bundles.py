# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
The bundles the app serves: found in the repository's ``bundles/`` folder and copied into ``<app>/model/<name>``
(MONAI Label's place for bundles) at every start, so the served configs always equal the repository's without hand
edits, while ``<app>/model/<name>/models/`` (the user's ``model.pt``, /train outputs) is kept.

No MONAI Label import: tested in the package's own environment.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["COPIED", "OVERRIDE_SECTIONS", "discover_bundles", "select_bundles", "prepare_bundles", "load_overrides"]

#: what is copied from each bundle; everything else in ``<app>/model/<name>`` (``models/``, ``eval/``) is left alone.
COPIED: tuple[str, ...] = ("configs", "docs", "LICENSE")
#: sections of an overrides file: ids set in ``configs/inference.json`` and in ``configs/train.json``.
OVERRIDE_SECTIONS: tuple[str, ...] = ("inference", "train")


def discover_bundles(bundles_dir: str | os.PathLike) -> list[str]:
    """
    Names of the bundles in ``bundles_dir``: sub-folders with ``configs/metadata.json``, sorted.

    Raises:
        FileNotFoundError: ``bundles_dir`` is not a folder (the message names the ``bundles_dir`` setting).
    """
    root = Path(bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"bundles_dir '{root}' is not a folder; start the server with `--conf bundles_dir <repo>/bundles`."
        )
    return sorted(p.name for p in root.iterdir() if (p / "configs" / "metadata.json").is_file())


def select_bundles(available: list[str], models: str | None) -> list[str]:
    """
    The bundles asked for by the ``models`` setting: ``"all"`` (or empty) for every available bundle, else a comma
    separated list of names, kept in the given order.

    Raises:
        ValueError: a name is not available (the message lists the available ones).
    """
    if not models or models.strip().lower() == "all":
        return list(available)
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"--conf models {models!r}: no bundle named {unknown}; available: {available} (or 'all').")
    return names


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` unless equal, replacing it atomically (other processes of the app may be reading)."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sync(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (file or folder): changed files replaced, files absent from ``src`` removed."""
    if src.is_file():
        _copy_if_changed(src, dst)
        return
    wanted = {p.relative_to(src) for p in src.rglob("*") if p.is_file()}
    for rel in sorted(wanted):
        _copy_if_changed(src / rel, dst / rel)
    for p in sorted(dst.rglob("*"), reverse=True):
        if p.is_file() and p.relative_to(dst) not in wanted:
            p.unlink()


def prepare_bundles(bundles_dir: str | os.PathLike, model_dir: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """
    Copy ``configs/``, ``docs/`` and ``LICENSE`` of each named bundle from ``bundles_dir`` into ``model_dir/<name>``
    and create ``model_dir/<name>/models/``. Idempotent and safe to run from several processes at once (MONAI Label
    starts the app again in each training/scoring subprocess): only changed files are replaced, atomically.

    Returns:
        bundle name -> served bundle folder ``model_dir/<name>``, in the order of ``names``.
    """
    served: dict[str, str] = {}
    for name in names:
        src, dst = Path(bundles_dir) / name, Path(model_dir) / name
        for item in COPIED:
            if (src / item).exists():
                _sync(src / item, dst / item)
        (dst / "models").mkdir(parents=True, exist_ok=True)
        served[name] = str(dst)
    return served


def load_overrides(path: str | os.PathLike | None, names: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """
    Read a JSON file of per-bundle config overrides (MONAI bundle ids, ``#`` separated)::

        {"medsegdiff_isic2018": {"inference": {"num_samples": 8}, "train": {"batch_size": 4}}}

    ``inference`` ids are set in the served ``configs/inference.json`` (/infer, scoring), ``train`` ids are passed to
    the bundle run of /train; a network change must be given in both so that ``model.pt`` fits.

    Args:
        path: the file (the ``overrides`` setting), or ``None``/empty for no overrides.
        names: the served bundles; overrides of other bundles are an error.

    Returns:
        bundle name -> ``{"inference": {...}, "train": {...}}`` (both present, possibly empty).

    Raises:
        ValueError: the file is not an object of bundle names to ``inference``/``train`` objects.
    """
    result: dict[str, dict[str, dict[str, Any]]] = {n: {s: {} for s in OVERRIDE_SECTIONS} for n in names}
    if not path:
        return result
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, Mapping):
        raise ValueError(f"overrides file '{path}': expected an object of bundle names, got {type(data).__name__}.")
    for name, sections in data.items():
        if name not in result:
            raise ValueError(f"overrides file '{path}': '{name}' is not a served bundle ({names}).")
        if not isinstance(sections, Mapping) or set(sections) - set(OVERRIDE_SECTIONS):
            raise ValueError(
                f"overrides file '{path}', bundle '{name}': expected an object with keys {list(OVERRIDE_SECTIONS)}, "
                f"got {sections!r}."
            )
        for section, values in sections.items():
            if not isinstance(values, Mapping):
                raise ValueError(f"overrides file '{path}', '{name}.{section}': expected an object of config ids.")
            result[name][section] = dict(values)
    return result
