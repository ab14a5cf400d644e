# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Dictionary-based wrappers of the ensemble fusion, STAPLE, dense CRF and uncertainty transforms.

Each ``Xd`` class applies the array transform ``X`` to every key in ``keys`` and stores the result under the
corresponding output key:

- ``output_keys`` (one per key) if given,
- else ``f"{key}_{output_postfix}"`` if ``output_postfix`` is given,
- else the key itself for fusions and CRFs (in place, like :py:class:`monai.transforms.MeanEnsembled` with a
  single key) and ``f"{key}_{map}"`` for single uncertainty maps (e.g. ``"samples_variance"``), so that the
  samples stay available for further maps.

:py:class:`EnsembleUncertaintyd` computes several uncertainty maps of one samples key at once.
Aliases ``XD`` and ``XDict`` follow MONAI's convention.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import MapTransform, Randomizable
from monai.utils import ensure_tuple

from monai_diffseg.transforms.dense_crf import DenseCRF, TorchDenseCRFFusion
from monai_diffseg.transforms.fusion import (
    MajorityVoteFusion,
    MeanEnsembleFusion,
    MedSegDiffSquaredMean,
    RandomSubsetFusion,
    look_up_named_option,
)
from monai_diffseg.transforms.staple import STAPLEFusion
from monai_diffseg.transforms.uncertainty import (
    UNCERTAINTY_MAPS,
    AmbiguousRegion,
    ConsistentRegion,
    EnsembleVariance,
    MutualInformation,
    PredictiveEntropy,
)

__all__ = [
    "MeanEnsembleFusiond",
    "MeanEnsembleFusionD",
    "MeanEnsembleFusionDict",
    "MajorityVoteFusiond",
    "MajorityVoteFusionD",
    "MajorityVoteFusionDict",
    "MedSegDiffSquaredMeand",
    "MedSegDiffSquaredMeanD",
    "MedSegDiffSquaredMeanDict",
    "RandomSubsetFusiond",
    "RandomSubsetFusionD",
    "RandomSubsetFusionDict",
    "STAPLEFusiond",
    "STAPLEFusionD",
    "STAPLEFusionDict",
    "DenseCRFd",
    "DenseCRFD",
    "DenseCRFDict",
    "TorchDenseCRFFusiond",
    "TorchDenseCRFFusionD",
    "TorchDenseCRFFusionDict",
    "EnsembleVarianced",
    "EnsembleVarianceD",
    "EnsembleVarianceDict",
    "PredictiveEntropyd",
    "PredictiveEntropyD",
    "PredictiveEntropyDict",
    "MutualInformationd",
    "MutualInformationD",
    "MutualInformationDict",
    "ConsistentRegiond",
    "ConsistentRegionD",
    "ConsistentRegionDict",
    "AmbiguousRegiond",
    "AmbiguousRegionD",
    "AmbiguousRegionDict",
    "EnsembleUncertaintyd",
    "EnsembleUncertaintyD",
    "EnsembleUncertaintyDict",
]


def _resolve_output_keys(
    keys: tuple[Hashable, ...],
    output_keys: KeysCollection | None,
    output_postfix: str | None,
    default_postfix: str | None = None,
) -> tuple[Hashable, ...]:
    """
    One output key per input key: ``output_keys``, else ``f"{key}_{postfix}"``, else the key itself.

    Raises:
        ValueError: when ``output_keys`` and ``keys`` have different lengths.
    """
    if output_keys is not None:
        out = ensure_tuple(output_keys)
        if len(out) != len(keys):
            raise ValueError(
                f"output_keys must provide one key per input key, got output_keys={out} for keys={keys}."
            )
        return out
    postfix = output_postfix if output_postfix is not None else default_postfix
    if postfix is None:
        return keys
    return tuple(f"{key}_{postfix}" for key in keys)


class _PerKeyd(MapTransform):
    """Apply ``self.transform`` to each key and write the result to the matching output key."""

    transform: Callable[..., NdarrayOrTensor]

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
        default_postfix: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = _resolve_output_keys(self.keys, output_keys, output_postfix, default_postfix)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: dictionary holding ensemble samples ``(E, C, H, W[, D])`` (or fused maps for the CRFs) at ``keys``.

        Returns:
            a copy of ``data`` with the results stored at the output keys.
        """
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key])
        return d


class MeanEnsembleFusiond(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.fusion.MeanEnsembleFusion`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        output_keys: where to store the fused ``(C, ...)`` maps (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = MeanEnsembleFusion.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys)
        self.transform = MeanEnsembleFusion()


class MajorityVoteFusiond(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.fusion.MajorityVoteFusion`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        threshold: probability from which a member votes foreground (inclusive).
        binarize: store the majority mask (ties count as foreground) instead of the vote fraction.
        output_keys: where to store the ``(C, ...)`` results (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = MajorityVoteFusion.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        binarize: bool = False,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys)
        self.transform = MajorityVoteFusion(threshold=threshold, binarize=binarize)


class MedSegDiffSquaredMeand(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.fusion.MedSegDiffSquaredMean`.

    .. warning::
        ``mean(samples) ** 2`` as in the MedSegDiff reference code's ``staple()``: **not** STAPLE, provided for
        comparison only. Use :py:class:`STAPLEFusiond` for STAPLE.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        output_keys: where to store the ``(C, ...)`` results (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = MedSegDiffSquaredMean.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys)
        self.transform = MedSegDiffSquaredMean()


class RandomSubsetFusiond(Randomizable, _PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.fusion.RandomSubsetFusion` (DiffSeg).

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        num_rounds: number of random subsets K.
        subset_size: members per subset H (``None``: ``max(1, E // 2)``).
        inner_fusion: ``"mean"``, ``"vote"``, ``"squared_mean"`` or a callable ``(H, C, ...) -> (C, ...)``; called
            as ``inner_fusion(subset, d[guide_key])`` when ``guide_key`` is given.
        guide_key: optional key of an image passed to ``inner_fusion`` (e.g. for a CRF).
        output_keys: where to store the ``(C, ...)`` results (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = RandomSubsetFusion.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_rounds: int = 10,
        subset_size: int | None = None,
        inner_fusion: str | Callable[..., NdarrayOrTensor] = "mean",
        guide_key: Hashable | None = None,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        _PerKeyd.__init__(self, keys, output_keys, output_postfix, allow_missing_keys)
        self.fusion = RandomSubsetFusion(num_rounds=num_rounds, subset_size=subset_size, inner_fusion=inner_fusion)
        self.guide_key = guide_key

    def set_random_state(self, seed: int | None = None, state: Any | None = None) -> RandomSubsetFusiond:
        """Seed this transform and the wrapped :py:class:`RandomSubsetFusion`."""
        super().set_random_state(seed, state)
        self.fusion.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Subsets are drawn by the wrapped array transform on each call."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: dictionary with ensemble samples at ``keys`` (and the guide at ``guide_key`` if set).

        Returns:
            a copy of ``data`` with the fused ``(C, ...)`` maps at the output keys.
        """
        d = dict(data)
        guide = None if self.guide_key is None else d[self.guide_key]
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.fusion(d[key], guide=guide)
        return d


class STAPLEFusiond(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.staple.STAPLEFusion` (ITK).

    The output ``MetaTensor`` carries ``.meta["staple_sensitivity"]`` / ``.meta["staple_specificity"]``.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        threshold: probability from which a member's voxel is foreground (inclusive).
        max_iterations: maximum EM iterations (``None``: ITK's default).
        confidence_weight: ITK's confidence weight.
        output_keys: where to store the ``(C, ...)`` posteriors (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = STAPLEFusion.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        max_iterations: int | None = None,
        confidence_weight: float = 1.0,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys)
        self.transform = STAPLEFusion(
            threshold=threshold, max_iterations=max_iterations, confidence_weight=confidence_weight
        )


class _GuidedCRFd(_PerKeyd):
    """Apply a ``(prob, guide)`` CRF transform to each key with the image at ``guide_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        guide_key: Hashable,
        output_keys: KeysCollection | None,
        output_postfix: str | None,
        allow_missing_keys: bool,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys)
        self.guide_key = guide_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: dictionary with fused probabilities ``(C, H, W[, D])`` at ``keys`` and the image at ``guide_key``.

        Returns:
            a copy of ``data`` with the refined maps at the output keys.
        """
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key], d[self.guide_key])
        return d


class DenseCRFd(_GuidedCRFd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.dense_crf.DenseCRF` (pydensecrf).

    Args:
        keys: keys of the fused probabilities ``(C, H, W[, D])``.
        guide_key: key of the channel-first guide image ``(Cg, H, W[, D])``.
        bilateral_sxy: bilateral spatial standard deviation (DiffSeg: 80).
        bilateral_srgb: bilateral intensity standard deviation, guide in 0..255 (DiffSeg: 13).
        bilateral_weight: bilateral compatibility (DiffSeg: 10).
        gaussian_sxy: Gaussian spatial standard deviation (DiffSeg: 3).
        gaussian_weight: Gaussian compatibility (DiffSeg: 3).
        num_iterations: mean-field iterations (DiffSeg: 5).
        binarize: store the hard mask instead of the refined probability.
        guide_scaling: ``"auto"``, ``"minmax"`` or ``"none"``, see
            :py:func:`~monai_diffseg.transforms.dense_crf.scale_guide`.
        eps: probability clipping.
        output_keys: where to store the refined maps (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = DenseCRF.backend

    def __init__(
        self,
        keys: KeysCollection,
        guide_key: Hashable,
        bilateral_sxy: float | Sequence[float] = 80.0,
        bilateral_srgb: float = 13.0,
        bilateral_weight: float = 10.0,
        gaussian_sxy: float | Sequence[float] = 3.0,
        gaussian_weight: float = 3.0,
        num_iterations: int = 5,
        binarize: bool = False,
        guide_scaling: str = "auto",
        eps: float = 1e-5,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, guide_key, output_keys, output_postfix, allow_missing_keys)
        self.transform = DenseCRF(
            bilateral_sxy=bilateral_sxy,
            bilateral_srgb=bilateral_srgb,
            bilateral_weight=bilateral_weight,
            gaussian_sxy=gaussian_sxy,
            gaussian_weight=gaussian_weight,
            num_iterations=num_iterations,
            binarize=binarize,
            guide_scaling=guide_scaling,
            eps=eps,
        )


class TorchDenseCRFFusiond(_GuidedCRFd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.dense_crf.TorchDenseCRFFusion` (pure PyTorch).

    Args:
        keys: keys of the fused probabilities ``(C, H, W[, D])``.
        guide_key: key of the channel-first guide image ``(Cg, H, W[, D])``.
        bilateral_sxy: bilateral spatial standard deviation (DiffSeg: 80; truncated by the window).
        bilateral_srgb: bilateral intensity standard deviation, guide in 0..255 (DiffSeg: 13).
        bilateral_weight: bilateral compatibility (DiffSeg: 10).
        gaussian_sxy: Gaussian spatial standard deviation (DiffSeg: 3).
        gaussian_weight: Gaussian compatibility (DiffSeg: 3).
        num_iterations: mean-field iterations (DiffSeg: 5).
        window_size: odd number of bilateral window taps per axis (``None``: 11 in 2D, 7 in 3D).
        dilation: voxel spacing of the bilateral window taps (``None``: 4 in 2D, 3 in 3D).
        binarize: store the hard mask instead of the refined probability.
        guide_scaling: ``"auto"``, ``"minmax"`` or ``"none"``, see
            :py:func:`~monai_diffseg.transforms.dense_crf.scale_guide`.
        eps: probability clipping.
        output_keys: where to store the refined maps (one per key); default: in place.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = TorchDenseCRFFusion.backend

    def __init__(
        self,
        keys: KeysCollection,
        guide_key: Hashable,
        bilateral_sxy: float | Sequence[float] = 80.0,
        bilateral_srgb: float = 13.0,
        bilateral_weight: float = 10.0,
        gaussian_sxy: float | Sequence[float] = 3.0,
        gaussian_weight: float = 3.0,
        num_iterations: int = 5,
        window_size: int | None = None,
        dilation: int | None = None,
        binarize: bool = False,
        guide_scaling: str = "auto",
        eps: float = 1e-5,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, guide_key, output_keys, output_postfix, allow_missing_keys)
        self.transform = TorchDenseCRFFusion(
            bilateral_sxy=bilateral_sxy,
            bilateral_srgb=bilateral_srgb,
            bilateral_weight=bilateral_weight,
            gaussian_sxy=gaussian_sxy,
            gaussian_weight=gaussian_weight,
            num_iterations=num_iterations,
            window_size=window_size,
            dilation=dilation,
            binarize=binarize,
            guide_scaling=guide_scaling,
            eps=eps,
        )


class EnsembleVarianced(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.uncertainty.EnsembleVariance`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        unbiased: divide by ``E - 1`` instead of ``E``.
        output_keys: where to store the ``(C, ...)`` maps (one per key); default ``f"{key}_variance"``.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = EnsembleVariance.backend

    def __init__(
        self,
        keys: KeysCollection,
        unbiased: bool = False,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys, default_postfix="variance")
        self.transform = EnsembleVariance(unbiased=unbiased)


class PredictiveEntropyd(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.uncertainty.PredictiveEntropy`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        multi_class: categorical entropy across channels (output ``(1, ...)``) instead of per-channel binary.
        output_keys: where to store the maps (one per key); default ``f"{key}_entropy"``.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = PredictiveEntropy.backend

    def __init__(
        self,
        keys: KeysCollection,
        multi_class: bool = False,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys, default_postfix="entropy")
        self.transform = PredictiveEntropy(multi_class=multi_class)


class MutualInformationd(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.uncertainty.MutualInformation`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        multi_class: categorical entropies across channels (output ``(1, ...)``) instead of per-channel binary.
        output_keys: where to store the maps (one per key); default ``f"{key}_mutual_information"``.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = MutualInformation.backend

    def __init__(
        self,
        keys: KeysCollection,
        multi_class: bool = False,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys, default_postfix="mutual_information")
        self.transform = MutualInformation(multi_class=multi_class)


class ConsistentRegiond(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.uncertainty.ConsistentRegion`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        threshold: probability from which a member's voxel is foreground (inclusive).
        output_keys: where to store the ``(C, ...)`` maps (one per key); default ``f"{key}_consistent"``.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = ConsistentRegion.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys, default_postfix="consistent")
        self.transform = ConsistentRegion(threshold=threshold)


class AmbiguousRegiond(_PerKeyd):
    """
    Dictionary-based wrapper of :py:class:`monai_diffseg.transforms.uncertainty.AmbiguousRegion`.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        threshold: probability from which a member's voxel is foreground (inclusive).
        output_keys: where to store the ``(C, ...)`` maps (one per key); default ``f"{key}_ambiguous"``.
        output_postfix: store at ``f"{key}_{output_postfix}"`` instead (ignored when ``output_keys`` is given).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = AmbiguousRegion.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        output_keys: KeysCollection | None = None,
        output_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_keys, output_postfix, allow_missing_keys, default_postfix="ambiguous")
        self.transform = AmbiguousRegion(threshold=threshold)


class EnsembleUncertaintyd(MapTransform):
    """
    Several uncertainty maps from the same ensemble samples in one transform.

    For every key and every name in ``maps`` the map is stored at ``f"{prefix}{name}"``. ``prefix`` defaults to
    ``""`` for a single key (``d["variance"]``, ``d["entropy"]``, ...) and to ``"{key}_"`` for several keys
    (``d["samples_variance"]``...); a ``"{key}"`` placeholder in ``prefix`` is replaced by the key.

    Supported maps (see :py:mod:`monai_diffseg.transforms.uncertainty`): ``"variance"``
    (:py:class:`EnsembleVariance`), ``"entropy"`` (:py:class:`PredictiveEntropy`), ``"mutual_information"``
    (:py:class:`MutualInformation`), ``"consistent"`` (:py:class:`ConsistentRegion`), ``"ambiguous"``
    (:py:class:`AmbiguousRegion`).

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        maps: names of the maps to compute.
        prefix: prefix of the output keys, may contain ``"{key}"``.
        threshold: binarisation threshold of the consistent/ambiguous regions.
        multi_class: categorical entropies across channels for ``"entropy"`` / ``"mutual_information"``.
        unbiased: unbiased variance.
        allow_missing_keys: don't raise exception if key is missing.

    Example::

        t = EnsembleUncertaintyd(keys="samples", maps=("variance", "entropy", "mutual_information"))
        d = t({"samples": samples})  # d["variance"], d["entropy"], d["mutual_information"]: (C, H, W)

    Raises:
        ValueError: unknown map name, or several keys with a ``prefix`` without ``"{key}"`` (colliding outputs).
    """

    backend = EnsembleVariance.backend

    def __init__(
        self,
        keys: KeysCollection,
        maps: Sequence[str] | str = UNCERTAINTY_MAPS,
        prefix: str | None = None,
        threshold: float = 0.5,
        multi_class: bool = False,
        unbiased: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        names = tuple(look_up_named_option("maps", m, UNCERTAINTY_MAPS) for m in ensure_tuple(maps))
        if len(names) == 0:
            raise ValueError(f"maps must name at least one of {UNCERTAINTY_MAPS}, got maps={maps}.")
        if prefix is None:
            prefix = "" if len(self.keys) == 1 else "{key}_"
        elif len(self.keys) > 1 and "{key}" not in prefix:
            raise ValueError(
                f"prefix must contain '{{key}}' when several keys are given (outputs would collide), "
                f"got prefix={prefix!r} for keys={self.keys}."
            )
        self.prefix = prefix
        self.maps = names
        factories: dict[str, Callable[[], Callable[..., NdarrayOrTensor]]] = {
            "variance": lambda: EnsembleVariance(unbiased=unbiased),
            "entropy": lambda: PredictiveEntropy(multi_class=multi_class),
            "mutual_information": lambda: MutualInformation(multi_class=multi_class),
            "consistent": lambda: ConsistentRegion(threshold=threshold),
            "ambiguous": lambda: AmbiguousRegion(threshold=threshold),
        }
        self.transforms = {name: factories[name]() for name in names}

    def output_key(self, key: Hashable, name: str) -> str:
        """The output key of map ``name`` computed from ``key``."""
        return self.prefix.replace("{key}", str(key)) + name

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: dictionary with ensemble samples ``(E, C, H, W[, D])`` at ``keys``.

        Returns:
            a copy of ``data`` with one entry per key and map.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            samples = d[key]
            for name, transform in self.transforms.items():
                d[self.output_key(key, name)] = transform(samples)
        return d


MeanEnsembleFusionD = MeanEnsembleFusionDict = MeanEnsembleFusiond
MajorityVoteFusionD = MajorityVoteFusionDict = MajorityVoteFusiond
MedSegDiffSquaredMeanD = MedSegDiffSquaredMeanDict = MedSegDiffSquaredMeand
RandomSubsetFusionD = RandomSubsetFusionDict = RandomSubsetFusiond
STAPLEFusionD = STAPLEFusionDict = STAPLEFusiond
DenseCRFD = DenseCRFDict = DenseCRFd
TorchDenseCRFFusionD = TorchDenseCRFFusionDict = TorchDenseCRFFusiond
EnsembleVarianceD = EnsembleVarianceDict = EnsembleVarianced
PredictiveEntropyD = PredictiveEntropyDict = PredictiveEntropyd
MutualInformationD = MutualInformationDict = MutualInformationd
ConsistentRegionD = ConsistentRegionDict = ConsistentRegiond
AmbiguousRegionD = AmbiguousRegionDict = AmbiguousRegiond
EnsembleUncertaintyD = EnsembleUncertaintyDict = EnsembleUncertaintyd
