# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Per-image uncertainty of a diffusion ensemble, and the ranking the active-learning strategy serves from it.

Pure torch / ``monai_diffseg`` (no MONAI Label import), so it is tested in the package's own environment. The ensemble
is what :class:`monai_diffseg.inferers.DiffusionSegmentationInferer` (``return_samples=True``) returns for one image:
member probabilities ``(E, C, *S)`` in ``[0, 1]``; each channel is one binary structure (``C = 1`` for a lesion, two
for the nested fundus disc/cup), so entropies are binary entropies per channel, at most ``log 2`` nats.

References:
    - Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning", 2011 (BALD / MI).
    - Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018 (sample diversity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from monai.utils import look_up_option

from monai_diffseg.metrics import compute_sample_diversity
from monai_diffseg.transforms import MutualInformation, PredictiveEntropy
from monai_diffseg.transforms.fusion import check_ensemble_samples

__all__ = [
    "INFO_KEY",
    "SCORES",
    "MAPS",
    "ensemble_scores",
    "uncertainty_map",
    "map_to_uint8",
    "rank_by_uncertainty",
]

#: key of the scores in the datastore's image info: ``info[INFO_KEY][model] = {score: value, ...}``.
INFO_KEY = "ensemble_uncertainty"
#: per-image scores, each the larger the more uncertain the ensemble.
SCORES: tuple[str, ...] = ("entropy", "mutual_information", "sample_diversity")
#: voxel-wise maps that /infer can return: predictive entropy (total) or mutual information (member disagreement).
MAPS: tuple[str, ...] = ("entropy", "mutual_information")


def ensemble_scores(samples: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """
    Uncertainty of one image's ensemble, three numbers from one inference pass.

    - ``entropy``: mean over channels and voxels of the binary entropy (nats) of the member mean ``H(mean_e p_e)``,
      the total predictive uncertainty, in ``[0, log 2]``.
    - ``mutual_information``: mean of ``H(mean_e p_e) - mean_e H(p_e)`` (BALD), the part due to members disagreeing
      (epistemic), in ``[0, log 2]``.
    - ``sample_diversity``: mean ``1 - IoU`` over all ordered pairs of members binarised at ``threshold`` (the
      ``E[d(S, S')]`` term of the generalized energy distance; two empty masks are at distance 0), in ``[0, 1]``.

    Args:
        samples: member probabilities ``(E, C, H, W[, D])`` in ``[0, 1]``.
        threshold: probability from which a member's voxel is foreground (for ``sample_diversity``).

    Returns:
        ``{"entropy": float, "mutual_information": float, "sample_diversity": float}``.

    Raises:
        ValueError: ``samples`` is not ``(E, C, H, W[, D])`` probabilities (e.g. a fused ``(C, H, W)`` map from a bundle
            whose inferer does not return its members: set ``return_samples`` in the bundle's ``inferer``).
    """
    _, data = check_ensemble_samples(samples, "samples")
    binary = (data >= threshold).to(torch.float32)[None]  # (1, E, C, *S)
    return {
        "entropy": float(PredictiveEntropy()(data).mean()),
        "mutual_information": float(MutualInformation()(data).mean()),
        "sample_diversity": float(compute_sample_diversity(binary, "1-iou")[0]),
    }


def uncertainty_map(samples: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """
    Voxel-wise uncertainty of one image's ensemble, the most uncertain channel at each voxel.

    Args:
        samples: member probabilities ``(E, C, H, W[, D])`` in ``[0, 1]`` (a ``MetaTensor`` keeps its metadata).
        kind: ``"entropy"`` (predictive entropy) or ``"mutual_information"``, both in nats in ``[0, log 2]``.

    Returns:
        float map ``(1, H, W[, D])``: the maximum over the ``C`` channels.
    """
    kind = look_up_option(kind, MAPS)
    per_channel = (PredictiveEntropy() if kind == "entropy" else MutualInformation())(samples)  # (C, *S)
    return per_channel.amax(dim=0, keepdim=True)


def map_to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Map nats in ``[0, log 2]`` to 8-bit grey levels ``round(255 * v / log 2)``, clipped: 255 = maximal uncertainty."""
    return (values.float() * (255.0 / math.log(2.0))).round().clamp(0, 255).to(torch.uint8)


def rank_by_uncertainty(
    infos: Mapping[str, Mapping[str, Any]], model: str, score: str = "mutual_information"
) -> list[tuple[str, float | None]]:
    """
    Order images for labelling: the most uncertain first.

    Args:
        infos: image id -> image info (as the datastore stores it); scores are read from
            ``info[INFO_KEY][model][score]``.
        model: the model whose scores rank the images.
        score: one of :data:`SCORES`.

    Returns:
        ``[(image_id, score or None), ...]``: scored images by decreasing score (ties by id), then the images without
        a score for ``model`` by id.
    """
    score = look_up_option(score, SCORES)
    scored, unscored = [], []
    for image_id, info in infos.items():
        value = (info.get(INFO_KEY) or {}).get(model, {}).get(score)
        if value is None:
            unscored.append((image_id, None))
        else:
            scored.append((image_id, float(value)))
    scored.sort(key=lambda item: (-item[1], item[0]))
    unscored.sort()
    return scored + unscored
