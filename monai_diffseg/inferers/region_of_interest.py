# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Two-pass (coarse-to-fine) inference for a small structure in a large image, e.g. the optic disc of a fundus photo."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_tensor, ensure_tuple_rep
from scipy import ndimage

from monai_diffseg.transforms.fundus import crop_square, square_box
from monai_diffseg.utils import as_flag

__all__ = ["RegionOfInterestInferer"]

logger = logging.getLogger(__name__)


def _resize(x: torch.Tensor, size: Sequence[int], antialias: bool) -> torch.Tensor:
    """Bilinear resize of ``(N, C, *S)`` (2D) to ``size``; identity when the size already matches."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)


class RegionOfInterestInferer(Inferer):
    """
    Segment a small structure (the optic disc and cup: about 60 of 512 pixels of a REFUGE photograph) at a useful
    resolution: a **coarse pass** on the whole image resized to ``image_size`` finds the structure (largest connected
    component of channel ``roi_channel`` of the mean coarse prediction >= ``threshold``); a **fine pass** segments the
    square around it (side ``roi_margin`` times its largest extent, at least ``roi_min_fraction`` of the shorter image
    side; outside the image zero) resized to ``image_size``; the fine samples are resized back and pasted into an
    all-zero canvas of the input's size. The output is ``(N, E, C, *S)`` at the input size, like
    :class:`DiffusionSegmentationInferer` with ``return_samples=True``.

    With ``roi=False``, or when the coarse pass finds nothing (logged), the fine pass runs on the whole image (resized to
    ``image_size`` and back). The same network does both passes: train it on full images and on disc-centred crops
    (:class:`monai_diffseg.transforms.RandDiscCropd`).

    Args:
        member_inferer: the inferer of each pass, ``member_inferer(images (N, C_in, *image_size), network)`` ->
            ``(N, E, C, *image_size)`` probabilities (e.g. :class:`DiffusionSegmentationInferer` with
            ``return_samples=True``, or a sigmoid U-Net wrapped to return ``(N, 1, C, *S)``).
        image_size: the network's input size (2D).
        roi: run the coarse pass and segment the region of interest; ``False``: whole image only.
        roi_margin: side of the square over the structure's largest extent.
        roi_min_fraction: smallest side as a fraction of the shorter image side.
        roi_channel: channel locating the region (the disc, the outer structure).
        threshold: probability from which the coarse pass counts a pixel.
        coarse_num_inference_steps, coarse_num_samples: the coarse pass runs a shallow copy of ``member_inferer``
            with these attributes replaced (where it has them: a U-Net inferer has none); ``None`` keeps the member's.

    Shapes:
        inputs ``(N, C_in, H, W)`` (any size; a batch shares one size) -> ``(N, E, C, H, W)``, with the inputs'
        metadata when they are a ``MetaTensor``. Photographs of several sizes are best run with batch size 1: a padded
        batch (``pad_list_data_collate``) is segmented, padding included, at the padded size.
    """

    def __init__(
        self,
        member_inferer: Callable[..., torch.Tensor],
        image_size: Sequence[int] | int,
        roi: bool = True,
        roi_margin: float = 2.0,
        roi_min_fraction: float = 0.1,
        roi_channel: int = 0,
        threshold: float = 0.5,
        coarse_num_inference_steps: int | None = None,
        coarse_num_samples: int | None = 1,
    ) -> None:
        super().__init__()
        self.image_size = tuple(int(s) for s in ensure_tuple_rep(image_size, 2))
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be two positive integers (2D), got {image_size!r}.")
        if roi_margin <= 0 or not 0 <= roi_min_fraction <= 1 or not 0 < threshold < 1:
            raise ValueError(
                f"need roi_margin > 0, 0 <= roi_min_fraction <= 1 and 0 < threshold < 1, got {roi_margin}, "
                f"{roi_min_fraction}, {threshold}."
            )
        self.member_inferer = member_inferer
        self.roi, self.roi_margin, self.roi_min_fraction = (
            as_flag(roi, "roi"),
            float(roi_margin),
            float(roi_min_fraction),
        )
        self.roi_channel, self.threshold = int(roi_channel), float(threshold)
        self.coarse_overrides = {
            k: v
            for k, v in (("num_inference_steps", coarse_num_inference_steps), ("num_samples", coarse_num_samples))
            if v is not None
        }

    def coarse_inferer(self) -> Callable[..., torch.Tensor]:
        """The member inferer with the coarse-pass overrides applied to a shallow copy (where it has them)."""
        overrides = {k: v for k, v in self.coarse_overrides.items() if hasattr(self.member_inferer, k)}
        if not overrides:
            return self.member_inferer
        coarse = copy.copy(self.member_inferer)
        for k, v in overrides.items():
            setattr(coarse, k, v)
        return coarse

    def _run(self, inferer: Callable[..., torch.Tensor], x: torch.Tensor, network: Any, *args: Any, **kw: Any):
        out = inferer(x, network, *args, **kw)
        out = convert_to_tensor(out, track_meta=False)
        if out.ndim != 5 or out.shape[0] != x.shape[0] or tuple(out.shape[3:]) != tuple(x.shape[2:]):
            raise ValueError(
                f"RegionOfInterestInferer: member_inferer must return (N, E, C, H, W) = ({x.shape[0]}, E, C, "
                f"{', '.join(map(str, x.shape[2:]))}) ensemble probabilities, got {tuple(out.shape)}; build a "
                "DiffusionSegmentationInferer with return_samples=True."
            )
        return out.float()

    def locate(self, coarse_prob: torch.Tensor, full_size: Sequence[int]) -> tuple[tuple[float, ...], float] | None:
        """
        The square region ``(centre, side)`` in full-size pixel coordinates from one coarse probability map ``(C, h,
        w)`` at ``image_size``; ``None`` when channel ``roi_channel`` has no pixel >= ``threshold``.
        """
        fg = (coarse_prob[self.roi_channel] >= self.threshold).cpu().numpy()
        labels, num = ndimage.label(fg)
        if num == 0:
            return None
        if num > 1:
            sizes = ndimage.sum(fg, labels, index=np.arange(1, num + 1))
            fg = labels == int(np.argmax(sizes)) + 1
        scale = [f / c for f, c in zip(full_size, coarse_prob.shape[1:])]
        # the box in full-size pixels: scale the low-resolution bounding box per axis (non-square images stretch)
        idx = np.argwhere(fg)
        low, high = idx.min(0) * scale, (idx.max(0) + 1) * scale
        centre = tuple(float(v) for v in (low + high) / 2.0)
        side = max(self.roi_margin * float((high - low).max()), self.roi_min_fraction * float(min(full_size)))
        return centre, side

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        out = self._infer(convert_to_tensor(inputs, track_meta=False), network, *args, **kwargs)
        if isinstance(inputs, MetaTensor):
            # the images' batched metadata, so that the decollated maps are saved under each image's name
            out = MetaTensor(out).copy_meta_from(inputs)
        return out

    def _infer(self, x: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"RegionOfInterestInferer takes 2D images (N, C_in, H, W), got shape {tuple(x.shape)}.")
        full_size = tuple(int(s) for s in x.shape[2:])
        whole = _resize(x, self.image_size, antialias=True)
        if not self.roi:
            return _resize_samples(self._run(self.member_inferer, whole, network, *args, **kwargs), full_size)
        coarse = self._run(self.coarse_inferer(), whole, network, *args, **kwargs).mean(dim=1)  # (N, C, h, w)
        rois = [self.locate(c, full_size) for c in coarse]
        found = [i for i, r in enumerate(rois) if r is not None]
        if len(found) < len(rois):
            logger.warning(
                "RegionOfInterestInferer: the coarse pass found no structure (channel %d >= %.2f) in %d of %d "
                "image(s); segmenting them whole.",
                self.roi_channel, self.threshold, len(rois) - len(found), len(rois),
            )  # fmt: skip
        out: list[torch.Tensor | None] = [None] * x.shape[0]
        missed = [i for i in range(x.shape[0]) if rois[i] is None]
        if missed:
            samples = self._run(self.member_inferer, whole[missed], network, *args, **kwargs)
            for i, s in zip(missed, _resize_samples(samples, full_size)):
                out[i] = s
        if found:
            crops = torch.stack([_resize(crop_square(x[i], *rois[i])[None], self.image_size, True)[0] for i in found])
            samples = self._run(self.member_inferer, crops, network, *args, **kwargs)
            for i, s in zip(found, samples):
                out[i] = _paste(s, *rois[i], full_size)
        return torch.stack(out)  # type: ignore[arg-type]


def _resize_samples(samples: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(N, E, C, h, w)`` -> ``(N, E, C, *size)`` bilinearly."""
    n, e, c = samples.shape[:3]
    return _resize(samples.reshape(n, e * c, *samples.shape[3:]), size, antialias=False).reshape(n, e, c, *size)


def _paste(samples: torch.Tensor, centre: Sequence[float], side: float, size: Sequence[int]) -> torch.Tensor:
    """Fine-pass samples ``(E, C, h, w)`` of the square ``(centre, side)`` resized to the square and pasted into zeros
    ``(E, C, *size)``; the parts of the square outside the image are dropped."""
    e, c = samples.shape[:2]
    box = square_box(centre, side)
    n = box[0][1] - box[0][0]
    square = _resize(samples.reshape(1, e * c, *samples.shape[2:]), (n, n), antialias=False)[0]
    canvas = samples.new_zeros(e * c, *size)
    dst = tuple(slice(max(0, a), min(b, s)) for (a, b), s in zip(box, size))
    src = tuple(slice(d.start - a, d.stop - a) for d, (a, _) in zip(dst, box))
    if all(d.stop > d.start for d in dst):
        canvas[(slice(None), *dst)] = square[(slice(None), *src)]
    return canvas.reshape(e, c, *size)
