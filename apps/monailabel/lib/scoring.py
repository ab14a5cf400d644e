# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Scoring method: one ensemble inference per unlabelled image, its uncertainty stored in the datastore's image info."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.utils.others.generic import strtobool

from lib.infer import DiffusionBundleInferTask
from lib.uncertainty import INFO_KEY

__all__ = ["EnsembleUncertaintyScoring"]

logger = logging.getLogger(__name__)


class EnsembleUncertaintyScoring(ScoringMethod):
    """
    Score every unlabelled image with the ensemble of one served bundle: ``info["ensemble_uncertainty"][model]`` =
    ``{"entropy", "mutual_information", "sample_diversity", "num_samples", "model_ts", "latency"}`` (see
    :func:`lib.uncertainty.ensemble_scores`). One inference per image: the members come from the bundle's own
    sampler (all members one batch, the image condition encoded once), unlike MONAI Label's epistemic scoring, which
    repeats the whole inference with dropout.

    Images already scored with the current checkpoint (same ``model.pt`` modification time) are skipped.

    Request options (the body of ``POST /scoring/<model>``): ``max_samples`` (score at most this many images; 0: all),
    ``force`` (re-score every image), ``device``.

    Args:
        infer_task: the model's infer task (shared with /infer, so the network is loaded once).
        model: the model's name, the key of its scores in the image info.
        max_samples: default of ``max_samples``.
    """

    def __init__(self, infer_task: DiffusionBundleInferTask, model: str, max_samples: int = 0) -> None:
        super().__init__(
            f"Ensemble uncertainty of '{model}' (entropy, mutual information, sample diversity) from one inference "
            "pass per unlabelled image"
        )
        self.infer_task = infer_task
        self.model = model
        self.max_samples = int(max_samples)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        path = self.infer_task.get_path()
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"scoring '{self.model}': no checkpoint at {path}; put the trained model.pt there.")
        model_ts = int(os.stat(path).st_mtime)
        force = strtobool(str(request.get("force", False)))
        max_samples = int(request.get("max_samples", self.max_samples))

        images = sorted(datastore.get_unlabeled_images())
        todo = [
            i
            for i in images
            if force
            or (datastore.get_image_info(i).get(INFO_KEY) or {}).get(self.model, {}).get("model_ts") != model_ts
        ]
        todo = todo[:max_samples] if max_samples > 0 else todo
        start = time.time()
        scores: dict[str, dict[str, Any]] = {}
        for image_id in todo:
            t0 = time.time()
            entry = self.infer_task.score_image(datastore.get_image_uri(image_id), request.get("device"))
            entry.update(model_ts=model_ts, latency=round(time.time() - t0, 3))
            stored = datastore.get_image_info(image_id).get(INFO_KEY) or {}
            stored[self.model] = entry
            datastore.update_image_info(image_id, {INFO_KEY: stored})
            scores[image_id] = entry
            logger.info(f"ENSEMBLE UNCERTAINTY:: {self.model} => {image_id} => {entry}")
        summary = {
            "total": len(images),
            "skipped": len(images) - len(todo),
            "executed": len(todo),
            "latency": round(time.time() - start, 3),
            "scores": scores,
        }
        logger.info(f"ENSEMBLE UNCERTAINTY:: {self.model} => {summary}")
        return summary
