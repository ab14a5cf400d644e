# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Visualisation helpers: segmentation overlays on the original images."""

from __future__ import annotations

from .overlay import SaveOverlayd, overlay_mask, save_overlay

__all__ = ["SaveOverlayd", "overlay_mask", "save_overlay"]
