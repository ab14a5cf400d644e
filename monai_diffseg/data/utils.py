# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Helpers shared by the data modules."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["describe_case"]


def describe_case(item: Any, index: int) -> tuple[str, list[str]]:
    """The case name and file paths of one data-list item, for error and failure reports.

    Args:
        item: a data-list entry, e.g. ``{"image": path, "label": path, "case": "ISIC_0000000"}``.
        index: its position in the data list (the name when the item has no ``"case"`` key and no file).

    Returns:
        ``(case, files)``: the ``"case"`` value, else the first file's name without extension.
    """
    if not isinstance(item, Mapping):
        return f"item {index}", []
    files = [str(v) for k, v in item.items() if k != "case" and isinstance(v, (str, os.PathLike))]
    case = item.get("case")
    if case is None:
        case = os.path.splitext(os.path.basename(files[0]))[0] if files else f"item {index}"
    return str(case), files
