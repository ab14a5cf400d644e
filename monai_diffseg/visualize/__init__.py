# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Visualisation helpers: segmentation overlays on the original images, the HTML review report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .overlay import SaveOverlayd, overlay_mask, save_overlay

if TYPE_CHECKING:
    from .report import case_sources, write_report

__all__ = ["SaveOverlayd", "case_sources", "overlay_mask", "save_overlay", "write_report"]


def __getattr__(name: str) -> Any:
    # imported on first use, so `python -m monai_diffseg.visualize.report` does not find it imported already
    if name in ("write_report", "case_sources"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
