# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Dictionary transforms of ensemble samples ``(E, C, H, W[, D])``: the one way to use the array transforms of
:py:mod:`~monai_diffseg.transforms.fusion`, :py:mod:`~monai_diffseg.transforms.staple`,
:py:mod:`~monai_diffseg.transforms.dense_crf` (:py:class:`EnsembleFusiond`, a fusion chosen by name) and
:py:mod:`~monai_diffseg.transforms.uncertainty` (:py:class:`EnsembleUncertaintyd`, several maps) on a data dict.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import TransformBackends, ensure_tuple

from monai_diffseg.transforms import uncertainty
from monai_diffseg.transforms.dense_crf import DenseCRF
from monai_diffseg.transforms.fusion import (
    MajorityVoteFusion,
    MeanEnsembleFusion,
    MedSegDiffSquaredMean,
    RandomSubsetFusion,
)
from monai_diffseg.transforms.staple import STAPLEFusion
from monai_diffseg.utils import look_up_named_option

__all__ = [
    "ENSEMBLE_FUSIONS",
    "EnsembleFusiond",
    "EnsembleFusionD",
    "EnsembleFusionDict",
    "EnsembleUncertaintyd",
    "EnsembleUncertaintyD",
    "EnsembleUncertaintyDict",
]

#: the methods that fuse random subsets of members, with their inner method (``None``: the ``inner_fusion`` argument)
_SUBSET_METHODS = {"random_subset": None, "subset_crf": "crf", "subset_torch_crf": "torch_crf"}
_INNER_FUSIONS = ("mean", "vote", "staple", "crf", "torch_crf", "squared_mean")
#: fusion methods selectable by name in the bundles' ``fusion`` option
ENSEMBLE_FUSIONS = (*_INNER_FUSIONS, *_SUBSET_METHODS)
#: array transform of each method that fuses the samples directly (the CRF methods refine the mean)
_FUSIONS: dict[str, Callable[..., Callable[..., torch.Tensor]]] = {
    "mean": MeanEnsembleFusion,
    "vote": MajorityVoteFusion,
    "staple": STAPLEFusion,
    "squared_mean": MedSegDiffSquaredMean,
}


def _mean_then_crf(crf: DenseCRF, samples: Any, guide: Any) -> torch.Tensor:
    """The CRF methods' fusion ``crf(mean(samples), guide)`` (picklable through ``partial``)."""
    return crf(MeanEnsembleFusion()(samples), guide)


def _named_fusion(method: str, kwargs: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The fusion ``(samples[, guide]) -> (C, ...)`` of a non-random ``method`` (guided for the CRF methods)."""
    if method in ("crf", "torch_crf"):
        return partial(_mean_then_crf, DenseCRF(backend="pydensecrf" if method == "crf" else "torch", **kwargs))
    return _FUSIONS[method](**kwargs)


class EnsembleFusiond(Randomizable, MapTransform):
    """
    Fuse ensemble samples ``(E, C, *S)`` into one probability map ``(C, *S)`` with a method chosen by name.

    - ``"mean"``: mean probability (:class:`MeanEnsembleFusion`);
    - ``"vote"``: fraction of members voting foreground (:class:`MajorityVoteFusion`);
    - ``"staple"``: STAPLE posterior through ITK (:class:`STAPLEFusion`, extra ``itk``);
    - ``"crf"``: mean, then the dense CRF guided by the image (:class:`DenseCRF`, ``backend="pydensecrf"``, extra
      ``crf``; DiffSeg's defaults);
    - ``"torch_crf"``: mean, then the same CRF with ``backend="torch"`` (no compiler needed, GPU);
    - ``"squared_mean"``: what the MedSegDiff reference code calls "staple" (mean squared), for comparison;
    - ``"random_subset"``: DiffSeg's ``num_rounds`` (K) rounds of ``subset_size`` (H) random members
      (:class:`RandomSubsetFusion`), each subset fused by ``inner_fusion``: the name of a method above or a
      callable ``(H, C, *S) -> (C, *S)``;
    - ``"subset_crf"`` / ``"subset_torch_crf"``: DiffSeg's DenseCRF fusion, ``"random_subset"`` with
      ``inner_fusion="crf"`` / ``"torch_crf"`` (each subset's mean refined by the CRF).

    Subsets are drawn from the inner :class:`RandomSubsetFusion`'s random state, seeded by :py:meth:`set_random_state`
    (as MONAI's ``Compose`` after ``monai.utils.set_determinism(seed)`` and ``DataLoader`` workers do): reproducible.

    Args:
        keys: keys of the ensemble samples ``(E, C, *S)``.
        method: one of :data:`ENSEMBLE_FUSIONS`.
        guide_key: image used by the CRF methods, channel-first ``(C_img, *S)`` at the samples' resolution.
        output_keys: where to store the fused ``(C, *S)`` maps (one per key); default: in place.
        num_rounds, subset_size: subset methods only (ignored by the others, like ``guide_key``): number of
            random subsets K and members per subset H (``None``: ``max(1, E // 2)``).
        method_kwargs: passed to the chosen fusion (e.g. ``bilateral_sxy`` for the CRFs, ``threshold`` for
            ``vote``); for the subset methods, to the inner method, and ``inner_fusion`` (default ``"mean"``) for
            ``random_subset``.

    Example (DiffSeg's fusion: 5 rounds of 5 members, each subset's mean refined by the torch CRF)::

        t = EnsembleFusiond("pred", "subset_torch_crf", num_rounds=5, subset_size=5).set_random_state(seed=0)
        d = t({"pred": samples, "image": image})  # samples (E, 1, H, W), image (3, H, W) -> d["pred"] (1, H, W)
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "mean",
        guide_key: Hashable | None = "image",
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
        num_rounds: int = 10,
        subset_size: int | None = None,
        **method_kwargs: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.method = look_up_named_option("method", method, ENSEMBLE_FUSIONS)
        self.guide_key = guide_key
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {list(self.output_keys)} must match keys {list(self.keys)} one to one.")
        self.needs_guide = self.method in ("crf", "torch_crf")
        self.fusion: Callable[..., torch.Tensor]
        if self.method not in _SUBSET_METHODS:
            self.fusion = _named_fusion(self.method, method_kwargs)
            return
        inner = _SUBSET_METHODS[self.method] or method_kwargs.pop("inner_fusion", "mean")
        if "inner_fusion" in method_kwargs:
            raise ValueError(f"method={self.method!r} fuses each subset with {inner!r}: remove inner_fusion.")
        if not callable(inner):
            inner = look_up_named_option("inner_fusion", inner, _INNER_FUSIONS)
            self.needs_guide = inner in ("crf", "torch_crf")
            inner = _named_fusion(inner, method_kwargs)
        elif method_kwargs:
            raise TypeError(f"a callable inner_fusion takes no method_kwargs, got {sorted(method_kwargs)}.")
        self.fusion = RandomSubsetFusion(num_rounds=num_rounds, subset_size=subset_size, inner_fusion=inner)

    def set_random_state(self, seed: int | None = None, state: Any | None = None) -> EnsembleFusiond:
        """Seed this transform and the random subsets of the subset methods."""
        super().set_random_state(seed, state)
        if isinstance(self.fusion, Randomizable):
            self.fusion.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """The subsets are drawn by the inner :class:`RandomSubsetFusion` at each call."""

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            if self.needs_guide and self.guide_key not in d:
                raise ValueError(f"fusion '{self.method}' needs the guide image at key '{self.guide_key}'.")
            d[out_key] = self.fusion(d[key], d[self.guide_key]) if self.needs_guide else self.fusion(d[key])
        return d


class EnsembleUncertaintyd(MapTransform):
    """
    Several uncertainty maps ``(C, H, W[, D])`` from the same ensemble samples in one transform.

    For every key and every name in ``maps`` the map is stored at ``f"{prefix}{name}"``. ``prefix`` defaults to
    ``""`` for a single key (``d["variance"]``, ``d["entropy"]``, ...) and to ``"{key}_"`` for several keys
    (``d["samples_variance"]``...); a ``"{key}"`` placeholder in ``prefix`` is replaced by the key.

    Args:
        keys: keys of the ensemble samples ``(E, C, H, W[, D])``.
        maps: names of the maps to compute (:data:`~monai_diffseg.transforms.uncertainty.UNCERTAINTY_MAPS`):
            ``"variance"`` (:py:class:`EnsembleVariance`), ``"entropy"`` (:py:class:`PredictiveEntropy`),
            ``"mutual_information"`` (:py:class:`MutualInformation`), ``"consistent"`` (:py:class:`ConsistentRegion`),
            ``"ambiguous"`` (:py:class:`AmbiguousRegion`).
        prefix: prefix of the output keys, may contain ``"{key}"``.
        threshold, multi_class, unbiased: options of the region maps, of the entropy / mutual information maps
            (categorical entropies across channels) and of the variance (unbiased estimator).

    Raises:
        ValueError: unknown map name, or several keys with a ``prefix`` without ``"{key}"`` (colliding outputs).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        maps: Sequence[str] | str = uncertainty.UNCERTAINTY_MAPS,
        prefix: str | None = None,
        threshold: float = 0.5,
        multi_class: bool = False,
        unbiased: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        names = tuple(look_up_named_option("maps", m, uncertainty.UNCERTAINTY_MAPS) for m in ensure_tuple(maps))
        if len(names) == 0:
            raise ValueError(f"maps must name at least one of {uncertainty.UNCERTAINTY_MAPS}, got maps={maps}.")
        if prefix is None:
            prefix = "" if len(self.keys) == 1 else "{key}_"
        elif len(self.keys) > 1 and "{key}" not in prefix:
            raise ValueError(
                f"prefix must contain '{{key}}' when several keys are given (outputs would collide), "
                f"got prefix={prefix!r} for keys={self.keys}."
            )
        self.prefix = prefix
        self.maps = names
        factories: dict[str, Callable[[], Callable[..., torch.Tensor]]] = {
            "variance": partial(uncertainty.EnsembleVariance, unbiased=unbiased),
            "entropy": partial(uncertainty.PredictiveEntropy, multi_class=multi_class),
            "mutual_information": partial(uncertainty.MutualInformation, multi_class=multi_class),
            "consistent": partial(uncertainty.ConsistentRegion, threshold=threshold),
            "ambiguous": partial(uncertainty.AmbiguousRegion, threshold=threshold),
        }
        self.transforms = {name: factories[name]() for name in names}

    def output_key(self, key: Hashable, name: str) -> str:
        """The output key of map ``name`` computed from ``key``."""
        return self.prefix.replace("{key}", str(key)) + name

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for name, transform in self.transforms.items():
                d[self.output_key(key, name)] = transform(d[key])
        return d


EnsembleFusionD = EnsembleFusionDict = EnsembleFusiond
EnsembleUncertaintyD = EnsembleUncertaintyDict = EnsembleUncertaintyd
