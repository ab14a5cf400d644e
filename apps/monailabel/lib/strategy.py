# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Active-learning strategy: the unlabelled image whose ensemble is the most uncertain is served next."""

from __future__ import annotations

import logging
from typing import Any

from monai.utils import look_up_option
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.uncertainty import SCORES, rank_by_uncertainty

__all__ = ["EnsembleUncertaintyStrategy"]

logger = logging.getLogger(__name__)


class EnsembleUncertaintyStrategy(Strategy):
    """
    Serve the unlabelled image with the highest stored ensemble ``score`` of ``model`` (written by
    :class:`lib.scoring.EnsembleUncertaintyScoring`); images not scored yet come after the scored ones, by id.

    Request options (the body of ``POST /activelearning/ensemble_uncertainty``): ``model``, ``score``.

    Args:
        model: default model whose scores rank the images.
        score: default score: ``"mutual_information"`` (members disagreeing, the epistemic part; BALD),
            ``"entropy"`` (total) or ``"sample_diversity"`` (mean ``1 - IoU`` between members).
    """

    def __init__(self, model: str, score: str = "mutual_information") -> None:
        super().__init__(f"Most uncertain unlabelled image first (ensemble {score} of '{model}')")
        self.model = model
        self.score = look_up_option(score, SCORES)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        model = request.get("model") or self.model
        score = look_up_option(request.get("score") or self.score, SCORES)
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        ranking = rank_by_uncertainty({i: datastore.get_image_info(i) for i in images}, model, score)
        image_id, value = ranking[0]
        logger.info(f"ENSEMBLE UNCERTAINTY:: {model} {score}: top {ranking[:5]}; selected {image_id}")
        return {"id": image_id, "model": model, "score": score, "value": value}
