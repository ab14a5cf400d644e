# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
STAPLE fusion of ensemble members through ITK's ``STAPLEImageFilter``.

STAPLE (Simultaneous Truth And Performance Level Estimation) treats each ensemble member as a rater of unknown
quality and estimates, by expectation-maximisation, the hidden true segmentation together with every rater's
sensitivity and specificity, down-weighting members that disagree with the consensus. It is what the public
MedSegDiff code does *not* implement despite its function name (see
:py:class:`monai_diffseg.transforms.fusion.MedSegDiffSquaredMean`). ITK is an optional dependency
(``pip install "monai-diffseg[itk]"``), imported on first use (loading its filtering module takes several seconds).

Reference:
    Warfield, Zou and Wells, "Simultaneous Truth and Performance Level Estimation (STAPLE): An Algorithm for the
    Validation of Image Segmentation", IEEE Transactions on Medical Imaging 23(7), 2004.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms.transform import Transform
from monai.utils import OptionalImportError, TransformBackends, optional_import

from monai_diffseg.transforms.fusion import SamplesLike, check_ensemble_samples, to_output

__all__ = ["STAPLEFusion", "STAPLE_SENSITIVITY_KEY", "STAPLE_SPECIFICITY_KEY"]

#: ``.meta`` key of the per-channel, per-member sensitivities estimated by :py:class:`STAPLEFusion`.
STAPLE_SENSITIVITY_KEY = "staple_sensitivity"
#: ``.meta`` key of the per-channel, per-member specificities estimated by :py:class:`STAPLEFusion`.
STAPLE_SPECIFICITY_KEY = "staple_specificity"


def _import_itk() -> Any:
    """Import ITK lazily, raising an ``OptionalImportError`` with installation instructions when it is missing."""
    itk, has_itk = optional_import("itk")
    if not has_itk:
        raise OptionalImportError('STAPLEFusion requires ITK, which is not installed: pip install "monai-diffseg[itk]"')
    return itk


class STAPLEFusion(Transform):
    """
    STAPLE fusion of binarised ensemble members: ``(E, C, ...) -> (C, ...)`` posterior foreground probability.

    ``samples``: probabilities (or binary masks) ``(E, C, H, W[, D])`` or a sequence of ``E`` ``(C, H, W[, D])``
    members. Per channel the members are binarised (``p >= threshold``) and fed as ``float32`` to
    ``itk.STAPLEImageFilter[itk.Image[itk.F, d], itk.Image[itk.F, d]]`` (``d`` = 2 or 3), whose output, the posterior
    probability of the true segmentation, is returned. The members' estimated performance is stored, when the output
    is a ``MetaTensor``, as lists (one per channel) of lists of floats (one per member)::

        out.meta["staple_sensitivity"][c][e]  # true positive rate of member e for channel c
        out.meta["staple_specificity"][c][e]  # true negative rate of member e for channel c

    They are also kept as ``self.sensitivity`` / ``self.specificity``. Where the EM is undefined (no member has any
    foreground, or all are foreground everywhere) the posterior is the constant vote and the undefined rate ``nan``.

    Args:
        threshold: probability from which a member's voxel is foreground (inclusive).
        max_iterations: maximum number of EM iterations (``None``: ITK's default, until convergence).
        confidence_weight: ITK's confidence weight scaling the prior foreground fraction (default 1.0).

    Raises:
        OptionalImportError: when ITK is not installed.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self, threshold: float = 0.5, max_iterations: int | None = None, confidence_weight: float = 1.0
    ) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got threshold={threshold}.")
        if max_iterations is not None and int(max_iterations) < 1:
            raise ValueError(f"max_iterations must be >= 1 or None, got max_iterations={max_iterations}.")
        if float(confidence_weight) <= 0:
            raise ValueError(f"confidence_weight must be > 0, got confidence_weight={confidence_weight}.")
        _import_itk()
        self.threshold = float(threshold)
        self.max_iterations = max_iterations
        self.confidence_weight = float(confidence_weight)
        self.sensitivity: list[list[float]] = []
        self.specificity: list[list[float]] = []

    def _staple_channel(self, masks: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
        """ITK STAPLE of one channel's 0/1 members ``(E, *S)``: posterior ``(*S)``, sensitivities, specificities."""
        num = masks.shape[0]
        if not masks.any():
            return np.zeros(masks.shape[1:], np.float32), [float("nan")] * num, [1.0] * num
        if masks.all():
            return np.ones(masks.shape[1:], np.float32), [1.0] * num, [float("nan")] * num
        itk = _import_itk()
        image_type = itk.Image[itk.F, masks.ndim - 1]
        staple = itk.STAPLEImageFilter[image_type, image_type].New()
        # itk.image_from_array reverses the axis order (numpy (H, W) -> ITK size (W, H)); STAPLE is voxel-wise and
        # itk.array_from_image reverses it back, so the round trip returns the numpy (H, W[, D]) layout.
        for e in range(num):
            staple.SetInput(e, itk.image_from_array(np.ascontiguousarray(masks[e], dtype=np.float32)))
        staple.SetForegroundValue(1.0)
        staple.SetConfidenceWeight(self.confidence_weight)
        if self.max_iterations is not None:
            staple.SetMaximumIterations(int(self.max_iterations))
        staple.Update()
        posterior = np.array(itk.array_from_image(staple.GetOutput()), dtype=np.float32, copy=True)
        sens, spec = [float(s) for s in staple.GetSensitivity()], [float(s) for s in staple.GetSpecificity()]
        if not np.isfinite(posterior).all():
            warnings.warn("ITK STAPLE produced non-finite values; falling back to the vote fraction.", stacklevel=4)
            posterior = masks.mean(axis=0).astype(np.float32)
        return posterior, sens, spec

    def __call__(self, samples: SamplesLike) -> torch.Tensor:
        img, data = check_ensemble_samples(samples)
        masks = (data >= self.threshold).cpu().numpy().astype(np.float32)
        posteriors, sens_all, spec_all = zip(*(self._staple_channel(masks[:, c]) for c in range(masks.shape[1])))
        self.sensitivity, self.specificity = list(sens_all), list(spec_all)
        out = torch.as_tensor(np.stack(posteriors), device=data.device).to(data.dtype)
        result = to_output(out, img)
        if isinstance(result, MetaTensor):
            result.meta[STAPLE_SENSITIVITY_KEY] = [list(s) for s in sens_all]
            result.meta[STAPLE_SPECIFICITY_KEY] = [list(s) for s in spec_all]
        return result
