# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Helpers shared by the data modules."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["describe_case"]


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
