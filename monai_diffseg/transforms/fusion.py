# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Fusion of diffusion-model ensembles into a single probability map.

A diffusion segmentation model is stochastic: running the reverse process ``E`` times from different noise
seeds yields ``E`` plausible masks. The inferers of this package return them stacked as ``(N, E, C, spatial...)``
batches; after MONAI's decollation every item holds ensemble samples of shape ``(E, C, H, W[, D])`` with
foreground probabilities in ``[0, 1]``. The transforms in this module reduce the ``E`` axis:

- :py:class:`MeanEnsembleFusion`: the mean probability (MedSegDiff / DiffSeg default).
- :py:class:`MajorityVoteFusion`: the fraction of members voting foreground, optionally binarised.
- :py:class:`MedSegDiffSquaredMean`: ``mean(samples) ** 2``, what the public MedSegDiff code calls "staple".
  It is **not** STAPLE; see :py:class:`monai_diffseg.transforms.staple.STAPLEFusion` for the real algorithm.
- :py:class:`RandomSubsetFusion`: DiffSeg's fusion: average of ``K`` fusions of random subsets of ``H`` members.

All of them accept a ``torch.Tensor``, a ``MetaTensor``, a ``numpy.ndarray`` or a sequence of ``(C, ...)`` members,
return a ``(C, ...)`` tensor and, when MONAI's meta tracking is on (the default), a ``MetaTensor`` carrying the
metadata (affine, ``applied_operations``...) of the input so that ``Invertd`` / ``SaveImaged`` work downstream.

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

__all__ = [
    "check_ensemble_samples",
    "check_probability_map",
    "look_up_named_option",
    "to_output",
    "MeanEnsembleFusion",
    "MajorityVoteFusion",
    "MedSegDiffSquaredMean",
    "RandomSubsetFusion",
    "FUSION_METHODS",
]

#: absolute tolerance used when checking that values are probabilities in ``[0, 1]``.
_PROB_ATOL = 1e-4

SamplesLike = NdarrayOrTensor | Sequence[NdarrayOrTensor]


def _stack_members(samples: Any) -> Any:
    """Stack a list/tuple of ``(C, ...)`` members into ``(E, C, ...)`` (MONAI's ``Ensemble``: first member's meta)."""
    if not isinstance(samples, (list, tuple)):
        return samples
    if len(samples) == 0:
        raise ValueError("samples must contain at least one ensemble member (E >= 1), got an empty sequence.")
    return Ensemble.get_stacked_torch([convert_to_tensor(m, track_meta=get_track_meta()) for m in samples])


def _check_values(data: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` when ``data`` holds NaN/inf or values outside ``[0, 1]``."""
    if data.numel() == 0:
        return
    if not torch.isfinite(data).all():
        raise ValueError(f"{name} must not contain NaN or infinite values, got {name} with shape {shape}.")
    lo, hi = float(data.min()), float(data.max())
    if lo < -_PROB_ATOL or hi > 1.0 + _PROB_ATOL:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
            f"for {name} with shape {shape}."
        )


def _float_tensor(img: torch.Tensor) -> torch.Tensor:
    """Plain (non-meta) floating point view of ``img`` (float32 unless already floating)."""
    data = img.as_tensor() if isinstance(img, MetaTensor) else img
    if not torch.is_floating_point(data):
        data = data.to(torch.float32)
    return data


def check_ensemble_samples(
    samples: SamplesLike, name: str = "samples", check_range: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Validate ensemble samples and convert them to tensors.

    Args:
        samples: ensemble of shape ``(E, C, H, W[, D])`` (tensor, ``MetaTensor`` or array), or a sequence of ``E``
            members of shape ``(C, H, W[, D])``.
        name: name of the argument, used in error messages.
        check_range: whether to require probabilities in ``[0, 1]``.

    Returns:
        ``(img, data)``: ``img`` is the input converted with :py:func:`monai.utils.convert_to_tensor` (a
        ``MetaTensor`` when meta tracking is on; use it as the destination of :py:func:`to_output`), ``data`` is a
        plain floating point ``torch.Tensor`` of shape ``(E, C, H, W[, D])`` to compute with.

    Raises:
        ValueError: wrong number of dimensions, empty ensemble (``E == 0``) or no channel (``C == 0``),
            NaN/inf values, or values outside ``[0, 1]`` (when ``check_range``).
    """
    img = convert_to_tensor(_stack_members(samples), track_meta=get_track_meta())
    shape = tuple(img.shape)
    if img.ndim not in (4, 5):
        raise ValueError(
            f"{name} must have shape (E, C, H, W) or (E, C, H, W, D) (ensemble members first), "
            f"got {name} with {img.ndim} dimensions and shape {shape}."
        )
    if shape[0] == 0:
        raise ValueError(f"{name} must contain at least one ensemble member (E >= 1), got {name} with shape {shape}.")
    if shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel (C >= 1), got {name} with shape {shape}.")
    data = _float_tensor(img)
    if check_range:
        _check_values(data, name, shape)
    elif data.numel() > 0 and torch.isnan(data).any():
        raise ValueError(f"{name} must not contain NaN values, got {name} with shape {shape}.")
    return img, data


def check_probability_map(
    prob: NdarrayOrTensor, name: str = "prob", spatial_dims: Sequence[int] = (2, 3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Validate a fused probability map of shape ``(C, H, W[, D])`` and convert it to tensors.

    Args:
        prob: probability map, channel first, values in ``[0, 1]``.
        name: name of the argument, used in error messages.
        spatial_dims: accepted numbers of spatial dimensions.

    Returns:
        ``(img, data)`` as in :py:func:`check_ensemble_samples`.

    Raises:
        ValueError: wrong number of dimensions, ``C == 0``, NaN values, or values outside ``[0, 1]``.
    """
    img = convert_to_tensor(prob, track_meta=get_track_meta())
    shape = tuple(img.shape)
    allowed = tuple(int(s) + 1 for s in spatial_dims)
    if img.ndim not in allowed:
        layouts = " or ".join("(C, " + ", ".join("HWD"[:s]) + ")" for s in spatial_dims)
        raise ValueError(f"{name} must have shape {layouts} (channel first), got {name} with shape {shape}.")
    if shape[0] == 0:
        raise ValueError(f"{name} must have at least one channel (C >= 1), got {name} with shape {shape}.")
    data = _float_tensor(img)
    _check_values(data, name, shape)
    return img, data


def to_output(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """
    Convert a computed tensor to the type of ``ref`` (``MetaTensor`` with ``ref``'s metadata, or plain tensor).

    Args:
        out: computed result, shape ``(C, ...)``.
        ref: the converted input returned by :py:func:`check_ensemble_samples` / :py:func:`check_probability_map`.

    Returns:
        ``out`` on ``ref``'s device, keeping ``out``'s dtype; a ``MetaTensor`` with a copy of ``ref``'s metadata
        (affine, ``applied_operations``...) when ``ref`` is a ``MetaTensor``.
    """
    result, *_ = convert_to_dst_type(out, ref, dtype=out.dtype)
    return result


class MeanEnsembleFusion(Transform):
    """
    Mean of the ensemble probabilities: ``(E, C, ...) -> (C, ...)``.

    This is the fusion used for evaluation by most diffusion segmentation papers (e.g. Wolleb et al. 2022;
    MedSegDiff, Wu et al. 2023). Unlike :py:class:`monai.transforms.MeanEnsemble` it validates that the input is an
    ensemble of probabilities and keeps the metadata of the ``(E, C, ...)`` input.

    Example::

        fused = MeanEnsembleFusion()(samples)  # samples: (E, C, H, W) -> fused: (C, H, W)
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, samples: SamplesLike) -> torch.Tensor:
        """
        Args:
            samples: ensemble probabilities ``(E, C, H, W[, D])`` or a sequence of ``E`` ``(C, H, W[, D])`` members.

        Returns:
            mean probability ``(C, H, W[, D])``.
        """
        img, data = check_ensemble_samples(samples)
        return to_output(data.mean(dim=0), img)


class MajorityVoteFusion(Transform):
    """
    Majority vote of the binarised ensemble members.

    Each member is binarised (``p >= threshold`` is foreground) and the fraction of members voting foreground is
    returned, per channel. With ``binarize=True`` the output is the hard majority mask ``fraction >= 0.5``: a tie
    (exactly half of an even number of members voting foreground) is resolved as **foreground**.

    Args:
        threshold: probability from which a member's voxel counts as a foreground vote (inclusive).
        binarize: return the majority mask (``0.``/``1.``) instead of the vote fraction.

    Example::

        votes = MajorityVoteFusion()(samples)  # (E, C, H, W) -> vote fraction (C, H, W) in {0, 1/E, ..., 1}
        mask = MajorityVoteFusion(binarize=True)(samples)  # (C, H, W) in {0, 1}
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, threshold: float = 0.5, binarize: bool = False) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got threshold={threshold}.")
        self.threshold = float(threshold)
        self.binarize = binarize

    def __call__(self, samples: SamplesLike, binarize: bool | None = None) -> torch.Tensor:
        """
        Args:
            samples: ensemble probabilities ``(E, C, H, W[, D])`` or a sequence of ``(C, H, W[, D])`` members.
            binarize: overrides ``self.binarize`` for this call.

        Returns:
            vote fraction, or majority mask, ``(C, H, W[, D])``.
        """
        img, data = check_ensemble_samples(samples)
        fraction = (data >= self.threshold).to(data.dtype).mean(dim=0)
        if self.binarize if binarize is None else binarize:
            fraction = (fraction >= 0.5).to(data.dtype)
        return to_output(fraction, img)


class MedSegDiffSquaredMean(Transform):
    """
    ``mean(samples) ** 2``: the fusion called "staple" in the public MedSegDiff reference code.

    .. warning::
        **This is NOT STAPLE** (Warfield et al., 2004). The reference implementation of MedSegDiff
        (``staple()`` in its ``guided_diffusion/utils.py``) multiplies every sample by the ensemble mean and averages
        again, with a convergence loop guarded by an ``if`` instead of a ``while`` so the body runs exactly once;
        the result is the squared mean probability, with no estimation of rater performance at all. It is provided
        only to reproduce and compare with numbers reported using that code. Use
        :py:class:`monai_diffseg.transforms.staple.STAPLEFusion` for the expectation-maximisation STAPLE algorithm.

    Squaring shrinks probabilities (``0.7 -> 0.49``), so with a ``0.5`` threshold the mask is the set where the mean
    probability is at least ``sqrt(0.5) ~= 0.707``: a more conservative mask than the mean.

    Example::

        fused = MedSegDiffSquaredMean()(samples)  # (E, C, H, W) -> (C, H, W)
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, samples: SamplesLike) -> torch.Tensor:
        """
        Args:
            samples: ensemble probabilities ``(E, C, H, W[, D])`` or a sequence of ``(C, H, W[, D])`` members.

        Returns:
            squared mean probability ``(C, H, W[, D])``.
        """
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
    DiffSeg's random-subset fusion.

    ``num_rounds`` (K) times, draw ``subset_size`` (H) distinct members at random (without replacement), fuse this
    subset with ``inner_fusion`` into a ``(C, ...)`` map, and return the average of the K fused maps. With the mean
    as inner fusion this equals the mean on average, but with a non-linear inner fusion (e.g. a dense CRF guided
    by the image, as in DiffSeg) the averaging over subsets smooths out the effect of individual members.

    Randomness comes from MONAI's :py:class:`~monai.transforms.Randomizable` ``self.R``
    (``numpy.random.RandomState``): call :py:meth:`set_random_state` for reproducible subsets.

    Args:
        num_rounds: number of random subsets K (>= 1).
        subset_size: members per subset H (>= 1); ``None`` uses ``max(1, E // 2)``. Must not exceed ``E``.
        inner_fusion: ``"mean"``, ``"vote"`` or ``"squared_mean"``, or a callable mapping a subset
            ``(H, C, ...)`` (plain ``torch.Tensor``) to a ``(C, ...)`` map. When :py:meth:`__call__` receives a
            ``guide`` image, the callable is called as ``inner_fusion(subset, guide)``.

    Example (DiffSeg: mean of each subset refined by a dense CRF guided by the image)::

        mean, crf = MeanEnsembleFusion(), DenseCRF()
        fusion = RandomSubsetFusion(num_rounds=5, subset_size=3, inner_fusion=lambda s, g: crf(mean(s), g))
        fusion.set_random_state(seed=0)
        fused = fusion(samples, guide=image)  # samples (E, 1, H, W), image (3, H, W) -> (1, H, W)

    Reference:
        Shuai et al., "DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference", 2024.
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
            self.inner_fusion: Callable[..., NdarrayOrTensor] = look_up_named_option(
                "inner_fusion", inner_fusion, FUSION_METHODS
            )()
        elif callable(inner_fusion):
            self.inner_fusion = inner_fusion
        else:
            raise TypeError(f"inner_fusion must be a string or a callable, got {type(inner_fusion).__name__}.")
        self.subsets: list[np.ndarray] = []

    def randomize(self, data: int) -> None:
        """
        Draw ``num_rounds`` subsets of member indices into ``self.subsets``.

        Args:
            data: the ensemble size E.
        """
        num_members = int(data)
        size = self.subset_size if self.subset_size is not None else max(1, num_members // 2)
        if size > num_members:
            raise ValueError(
                f"subset_size must not exceed the ensemble size E, "
                f"got subset_size={size} and samples with E={num_members}."
            )
        self.subsets = [np.sort(self.R.choice(num_members, size=size, replace=False)) for _ in range(self.num_rounds)]

    def __call__(
        self, samples: SamplesLike, guide: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> torch.Tensor:
        """
        Args:
            samples: ensemble probabilities ``(E, C, H, W[, D])`` or a sequence of ``(C, H, W[, D])`` members.
            guide: optional image forwarded to ``inner_fusion`` as its second argument, e.g. ``(3, H, W)``.
            randomize: draw new subsets; ``False`` reuses ``self.subsets`` from the previous call.

        Returns:
            average of the K subset fusions, ``(C, H, W[, D])``.
        """
        img, data = check_ensemble_samples(samples)
        if randomize or not self.subsets:
            self.randomize(data.shape[0])
        elif max(int(s.max()) for s in self.subsets) >= data.shape[0]:
            raise ValueError(f"stored subsets index members beyond E={data.shape[0]} of samples {tuple(data.shape)}.")
        acc: torch.Tensor | None = None
        for subset in self.subsets:
            members = data[torch.as_tensor(subset, device=data.device)]
            fused = self.inner_fusion(members) if guide is None else self.inner_fusion(members, guide)
            fused_t = convert_to_tensor(fused, track_meta=False, device=data.device, dtype=data.dtype)
            if fused_t.shape != data.shape[1:]:
                raise ValueError(
                    f"inner_fusion must return a map of shape {tuple(data.shape[1:])} (C, spatial...), "
                    f"got shape {tuple(fused_t.shape)} for a subset of shape {tuple(members.shape)}."
                )
            acc = fused_t if acc is None else acc + fused_t
        assert acc is not None
        return to_output(acc / len(self.subsets), img)
