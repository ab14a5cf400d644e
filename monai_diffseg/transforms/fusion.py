# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Fusion of diffusion-model ensembles into a single probability map.

Running a diffusion segmentation model's reverse process ``E`` times from different noise seeds yields ``E``
plausible masks; the inferers stack them as ``(N, E, C, spatial...)`` and after MONAI's decollation every item holds
ensemble samples ``(E, C, H, W[, D])`` of foreground probabilities in ``[0, 1]``. The transforms here reduce ``E``:
they take ``samples``, a ``torch.Tensor``, ``MetaTensor`` or ``numpy.ndarray`` ``(E, C, H, W[, D])`` or a sequence of
``E`` ``(C, H, W[, D])`` members, and return ``(C, H, W[, D])``: with MONAI's meta tracking on (the default) a
``MetaTensor`` with the input's metadata (affine, ``applied_operations``...) for ``Invertd`` / ``SaveImaged``.

References:
    - Wu et al., "MedSegDiff: Medical Image Segmentation with Diffusion Probabilistic Model", MIDL 2023.
    - Wu et al., "MedSegDiff-V2: Diffusion-based Medical Image Segmentation with Transformer", AAAI 2024.
    - Wolleb et al., "Diffusion Models for Implicit Image Segmentation Ensembles", MIDL 2022.
    - Shuai et al., "DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference", 2024.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms.post.array import Ensemble
from monai.transforms.transform import Randomizable, Transform
from monai.utils import TransformBackends, convert_to_tensor
from monai.utils.type_conversion import convert_to_dst_type

from monai_diffseg.utils import look_up_named_option

# check_ensemble_samples, check_probability_map and to_output are shared with the sibling transforms, not exported
__all__ = [
    "MeanEnsembleFusion",
    "MajorityVoteFusion",
    "MedSegDiffSquaredMean",
    "RandomSubsetFusion",
    "FUSION_METHODS",
]

SamplesLike = NdarrayOrTensor | Sequence[NdarrayOrTensor]


def _checked(
    x: Any, name: str, layouts: str, ndims: Sequence[int], channel_dim: int, check_range: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation shared by :py:func:`check_ensemble_samples` and :py:func:`check_probability_map`."""
    img = convert_to_tensor(x, track_meta=get_track_meta())
    shape = tuple(img.shape)
    if img.ndim not in ndims:
        raise ValueError(f"{name} must have shape {layouts}, got {name} with {img.ndim} dimensions and shape {shape}.")
    if channel_dim == 1 and shape[0] == 0:
        raise ValueError(f"{name} must contain at least one ensemble member (E >= 1), got {name} with shape {shape}.")
    if shape[channel_dim] == 0:
        raise ValueError(f"{name} must have at least one channel (C >= 1), got {name} with shape {shape}.")
    data = img.as_tensor() if isinstance(img, MetaTensor) else img
    if not torch.is_floating_point(data):
        data = data.to(torch.float32)
    if data.numel() == 0:
        return img, data
    valid = torch.isfinite(data).all() if check_range else not torch.isnan(data).any()
    if not valid:
        what = "NaN or infinite" if check_range else "NaN"
        raise ValueError(f"{name} must not contain {what} values, got {name} with shape {shape}.")
    lo, hi = (float(data.min()), float(data.max())) if check_range else (0.0, 1.0)
    if lo < -1e-4 or hi > 1.0 + 1e-4:  # tolerance for round-off
        raise ValueError(f"{name} must be probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}], shape {shape}.")
    return img, data


def check_ensemble_samples(
    samples: SamplesLike, name: str = "samples", check_range: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Validate ensemble ``samples`` (as in the module docstring; a sequence is stacked like MONAI's ``Ensemble``, with
    the first member's metadata) and return ``(img, data)``: ``img`` the input converted by
    :py:func:`monai.utils.convert_to_tensor` (a ``MetaTensor`` when meta tracking is on; the destination of
    :py:func:`to_output`), ``data`` a plain floating point ``torch.Tensor`` ``(E, C, H, W[, D])`` to compute with.

    Raises ``ValueError`` naming the argument ``name``: wrong number of dimensions, ``E == 0`` (or an empty
    sequence), ``C == 0``, NaN/inf values, or values outside ``[0, 1]`` (only NaN is checked if not ``check_range``).
    """
    if isinstance(samples, (list, tuple)):
        if len(samples) == 0:
            raise ValueError("samples must contain at least one ensemble member (E >= 1), got an empty sequence.")
        samples = Ensemble.get_stacked_torch([convert_to_tensor(m, track_meta=get_track_meta()) for m in samples])
    layouts = "(E, C, H, W) or (E, C, H, W, D) (ensemble members first)"
    return _checked(samples, name, layouts, (4, 5), 1, check_range)


def check_probability_map(
    prob: NdarrayOrTensor, name: str = "prob", spatial_dims: Sequence[int] = (2, 3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Validate a fused probability map ``prob`` ``(C, H, W[, D])`` (``spatial_dims``: the accepted numbers of spatial
    dimensions) as :py:func:`check_ensemble_samples` does ensemble samples, and return ``(img, data)`` likewise.
    """
    layouts = " or ".join("(C, " + ", ".join("HWD"[:s]) + ")" for s in spatial_dims) + " (channel first)"
    return _checked(prob, name, layouts, tuple(int(s) + 1 for s in spatial_dims), 0)


def to_output(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """
    ``out`` ``(C, ...)`` on the device of ``ref`` (the ``img`` of :py:func:`check_ensemble_samples`), keeping
    ``out``'s dtype; a ``MetaTensor`` with a copy of ``ref``'s metadata when ``ref`` is a ``MetaTensor``.
    """
    return convert_to_dst_type(out, ref, dtype=out.dtype)[0]


class MeanEnsembleFusion(Transform):
    """
    Mean of the ensemble probabilities ``(E, C, ...) -> (C, ...)``, the evaluation fusion of most diffusion
    segmentation papers (Wolleb et al. 2022; MedSegDiff). Unlike :py:class:`monai.transforms.MeanEnsemble` it
    validates that the input is an ensemble of probabilities and keeps the metadata of the ``(E, C, ...)`` input.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, samples: SamplesLike) -> torch.Tensor:
        img, data = check_ensemble_samples(samples)
        return to_output(data.mean(dim=0), img)


class MajorityVoteFusion(Transform):
    """
    Majority vote of the binarised ensemble members: ``(E, C, ...) -> (C, ...)``.

    Each member is binarised (``p >= threshold`` is foreground) and the fraction of members voting foreground,
    ``{0, 1/E, ..., 1}``, is returned per channel. With ``binarize=True`` the output is the hard majority mask
    ``fraction >= 0.5``: a tie (half of an even number of members voting foreground) is **foreground**.

    Args:
        threshold: probability from which a member's voxel counts as a foreground vote (inclusive).
        binarize: return the majority mask (``0.``/``1.``) instead of the vote fraction; ``__call__``'s
            ``binarize`` overrides it for one call.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, threshold: float = 0.5, binarize: bool = False) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got threshold={threshold}.")
        self.threshold = float(threshold)
        self.binarize = binarize

    def __call__(self, samples: SamplesLike, binarize: bool | None = None) -> torch.Tensor:
        img, data = check_ensemble_samples(samples)
        fraction = (data >= self.threshold).to(data.dtype).mean(dim=0)
        if self.binarize if binarize is None else binarize:
            fraction = (fraction >= 0.5).to(data.dtype)
        return to_output(fraction, img)


class MedSegDiffSquaredMean(Transform):
    """
    ``mean(samples) ** 2``: the fusion called "staple" in the public MedSegDiff reference code.

    .. warning::
        **This is NOT STAPLE** (Warfield et al., 2004). MedSegDiff's ``staple()`` (``guided_diffusion/utils.py``)
        multiplies every sample by the ensemble mean and averages again, in a loop guarded by an ``if`` instead of a
        ``while`` (so run once): the squared mean, no estimation of rater performance. It is here only to reproduce
        numbers reported with that code; :py:class:`monai_diffseg.transforms.staple.STAPLEFusion` is the real STAPLE.

    Squaring shrinks probabilities (``0.7 -> 0.49``), so with a ``0.5`` threshold the mask is where the mean
    probability is at least ``sqrt(0.5) ~= 0.707``: more conservative than the mean. ``(E, C, ...) -> (C, ...)``.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, samples: SamplesLike) -> torch.Tensor:
        img, data = check_ensemble_samples(samples)
        return to_output(data.mean(dim=0) ** 2, img)


#: named fusions accepted by :py:class:`RandomSubsetFusion` (``inner_fusion``).
FUSION_METHODS: dict[str, Callable[[], Callable[..., Any]]] = {
    "mean": MeanEnsembleFusion,
    "vote": MajorityVoteFusion,
    "squared_mean": MedSegDiffSquaredMean,
}


class RandomSubsetFusion(Randomizable, Transform):
    """
    DiffSeg's random-subset fusion ``(E, C, ...) -> (C, ...)``: ``num_rounds`` (K) times, draw ``subset_size`` (H)
    distinct members at random, fuse the subset with ``inner_fusion`` into a ``(C, ...)`` map, and return the average
    of the K maps. With the mean as inner fusion this equals the mean on average; with a non-linear inner fusion
    (DiffSeg's dense CRF guided by the image) the averaging over subsets smooths out the effect of individual
    members. The subsets come from MONAI's :py:class:`~monai.transforms.Randomizable` ``self.R``: call
    :py:meth:`set_random_state` to reproduce them.

    Args:
        num_rounds: number of random subsets K (>= 1).
        subset_size: members per subset H (>= 1); ``None`` uses ``max(1, E // 2)``. Must not exceed ``E``.
        inner_fusion: ``"mean"``, ``"vote"`` or ``"squared_mean"``, or a callable mapping a subset ``(H, C, ...)``
            (plain ``torch.Tensor``) to a ``(C, ...)`` map, called as ``inner_fusion(subset, guide)`` when
            :py:meth:`__call__` receives a ``guide`` image (e.g. ``(3, H, W)``). ``__call__``'s ``randomize=False``
            reuses the subsets of the previous call.

    Example (DiffSeg, Shuai et al. 2024: mean of each subset refined by a dense CRF guided by the image)::

        fusion = RandomSubsetFusion(5, 3, inner_fusion=lambda s, g: DenseCRF()(MeanEnsembleFusion()(s), g))
        fused = fusion.set_random_state(seed=0)(samples, guide=image)  # (E, 1, H, W), (3, H, W) -> (1, H, W)
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        num_rounds: int = 10,
        subset_size: int | None = None,
        inner_fusion: str | Callable[..., NdarrayOrTensor] = "mean",
    ) -> None:
        if int(num_rounds) < 1:
            raise ValueError(f"num_rounds must be >= 1, got num_rounds={num_rounds}.")
        if subset_size is not None and int(subset_size) < 1:
            raise ValueError(f"subset_size must be >= 1 or None, got subset_size={subset_size}.")
        self.num_rounds = int(num_rounds)
        self.subset_size = None if subset_size is None else int(subset_size)
        if isinstance(inner_fusion, str):
            inner_fusion = look_up_named_option("inner_fusion", inner_fusion, FUSION_METHODS)()
        elif not callable(inner_fusion):
            raise TypeError(f"inner_fusion must be a string or a callable, got {type(inner_fusion).__name__}.")
        self.inner_fusion: Callable[..., NdarrayOrTensor] = inner_fusion
        self.subsets: list[np.ndarray] = []

    def randomize(self, data: int) -> None:
        """Draw ``num_rounds`` sorted subsets of member indices into ``self.subsets`` for ``data`` = E members."""
        num_members = int(data)
        size = self.subset_size if self.subset_size is not None else max(1, num_members // 2)
        if size > num_members:
            raise ValueError(f"subset_size={size} must not exceed the ensemble size E={num_members} of the samples.")
        self.subsets = [np.sort(self.R.choice(num_members, size=size, replace=False)) for _ in range(self.num_rounds)]

    def __call__(
        self, samples: SamplesLike, guide: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> torch.Tensor:
        img, data = check_ensemble_samples(samples)
        if randomize or not self.subsets:
            self.randomize(data.shape[0])
        elif max(int(s.max()) for s in self.subsets) >= data.shape[0]:
            raise ValueError(f"stored subsets index members beyond E={data.shape[0]} of samples {tuple(data.shape)}.")
        acc = torch.zeros_like(data[0])
        for subset in self.subsets:
            members = data[torch.as_tensor(subset, device=data.device)]
            fused = self.inner_fusion(members) if guide is None else self.inner_fusion(members, guide)
            fused = convert_to_tensor(fused, track_meta=False, device=data.device, dtype=data.dtype)
            if fused.shape != data.shape[1:]:
                raise ValueError(
                    f"inner_fusion must return a map of shape {tuple(data.shape[1:])} (C, spatial...), "
                    f"got shape {tuple(fused.shape)} for a subset of shape {tuple(members.shape)}."
                )
            acc += fused
        return to_output(acc / len(self.subsets), img)
