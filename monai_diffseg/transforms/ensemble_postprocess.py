# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Bundle-facing post-processing of ensemble samples: fusion chosen by name, and per-case ensemble scores."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor, look_up_option

from monai_diffseg.metrics import compute_generalized_energy_distance, compute_sample_diversity
from monai_diffseg.transforms.dense_crf import DenseCRF, TorchDenseCRFFusion
from monai_diffseg.transforms.fusion import (
    MajorityVoteFusion,
    MeanEnsembleFusion,
    MedSegDiffSquaredMean,
    RandomSubsetFusion,
)
from monai_diffseg.transforms.staple import STAPLEFusion

__all__ = ["ENSEMBLE_FUSIONS", "EnsembleFusiond", "EnsembleScoresd"]

#: fusion methods selectable by name in the bundles' ``fusion`` option
ENSEMBLE_FUSIONS = ("mean", "vote", "staple", "crf", "torch_crf", "squared_mean", "random_subset")


class EnsembleFusiond(MapTransform):
    """
    Fuse ensemble samples ``(E, C, *S)`` into one probability map ``(C, *S)`` with a method chosen by name.

    - ``"mean"``: mean probability (:class:`MeanEnsembleFusion`);
    - ``"vote"``: fraction of members voting foreground (:class:`MajorityVoteFusion`);
    - ``"staple"``: STAPLE posterior through ITK (:class:`STAPLEFusion`, extra ``itk``);
    - ``"crf"``: mean, then DenseCRF refinement guided by the image (:class:`DenseCRF`, extra ``crf``; DiffSeg's
      defaults);
    - ``"torch_crf"``: mean, then the pure-torch dense CRF (:class:`TorchDenseCRFFusion`, no compiler needed, GPU);
    - ``"squared_mean"``: what the MedSegDiff reference code calls "staple" (mean squared), for comparison;
    - ``"random_subset"``: DiffSeg's K rounds of H random members (:class:`RandomSubsetFusion`).

    Args:
        keys: keys of the ensemble samples.
        method: one of :data:`ENSEMBLE_FUSIONS`.
        guide_key: image used by the CRF methods, channel-first ``(C_img, *S)`` at the samples' resolution.
        output_keys: where to store the fused maps; default: in place (the samples are replaced).
        allow_missing_keys: don't raise if a key is missing.
        method_kwargs: passed to the chosen fusion (e.g. ``bilateral_sxy`` for the CRFs, ``num_rounds`` for
            ``random_subset``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "mean",
        guide_key: Hashable | None = "image",
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
        **method_kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = look_up_option(method, ENSEMBLE_FUSIONS)
        self.guide_key = guide_key
        self.output_keys = list(output_keys) if isinstance(output_keys, (list, tuple)) else output_keys
        if isinstance(self.output_keys, str):
            self.output_keys = [self.output_keys]
        if self.output_keys is not None and len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must match keys {self.keys} one to one.")
        self.mean = MeanEnsembleFusion()
        self.fuse: Any
        self.refine: Any = None
        if self.method == "mean":
            self.fuse = self.mean
        elif self.method == "vote":
            self.fuse = MajorityVoteFusion(**method_kwargs)
        elif self.method == "staple":
            self.fuse = STAPLEFusion(**method_kwargs)
        elif self.method == "squared_mean":
            self.fuse = MedSegDiffSquaredMean()
        elif self.method == "random_subset":
            self.fuse = RandomSubsetFusion(**method_kwargs)
        else:
            self.fuse = self.mean
            self.refine = DenseCRF(**method_kwargs) if self.method == "crf" else TorchDenseCRFFusion(**method_kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        outputs = self.output_keys or list(self.keys)
        for key, out_key in self.key_iterator(d, outputs):
            fused = self.fuse(d[key])
            if self.refine is not None:
                if self.guide_key not in d:
                    raise ValueError(f"fusion '{self.method}' needs the guide image at key '{self.guide_key}'.")
                fused = self.refine(fused, d[self.guide_key])
            d[out_key] = fused
        return d


class EnsembleScoresd(MapTransform):
    """
    Per-case ensemble scores as scalars in the data dict: sample diversity (``1 - IoU`` and ``l2``) and, when a
    reference annotation is present, the generalized energy distance (GED^2, PHiSeg/BerDiff/CIMD convention).

    Args:
        keys: key of the ensemble samples ``(E, C, *S)`` (probabilities; thresholded for the IoU-based scores).
        label_key: key of the reference annotation(s): ``(C, *S)`` (one annotator) or ``(R, C, *S)``, binary, at
            the samples' resolution. Missing -> only diversity is computed.
        threshold: probability from which a member is foreground.
        prefix: prefix of the output keys (``f"{prefix}sample_diversity"``, ``f"{prefix}sample_diversity_l2"``,
            ``f"{prefix}ged"``).
    """

    def __init__(
        self, keys: KeysCollection, label_key: Hashable | None = "label", threshold: float = 0.5, prefix: str = ""
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        if len(self.keys) != 1:
            raise ValueError(f"EnsembleScoresd takes one samples key, got {self.keys}.")
        self.label_key = label_key
        self.threshold = threshold
        self.prefix = prefix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        samples = convert_to_tensor(d[self.keys[0]], track_meta=False).float()
        if samples.ndim < 3:
            raise ValueError(f"samples at '{self.keys[0]}' must be (E, C, *spatial), got {tuple(samples.shape)}.")
        hard = (samples >= self.threshold).float()[None]
        d[f"{self.prefix}sample_diversity"] = compute_sample_diversity(hard, distance="1-iou")[0].float()
        d[f"{self.prefix}sample_diversity_l2"] = compute_sample_diversity(samples[None], distance="l2")[0].float()
        if self.label_key is not None and self.label_key in d:
            ref = convert_to_tensor(d[self.label_key], track_meta=False).float()
            if ref.ndim == samples.ndim - 1:
                ref = ref[None]
            if ref.shape[1:] != samples.shape[1:]:
                raise ValueError(
                    f"reference '{self.label_key}' {tuple(ref.shape)} and samples {tuple(samples.shape)} must share "
                    "channels and spatial shape; resize the label to the network resolution for ensemble scores."
                )
            d[f"{self.prefix}ged"] = compute_generalized_energy_distance(hard, (ref > 0.5).float()[None])["ged"][
                0
            ].float()
        return d
