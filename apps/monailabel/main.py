# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
MONAI Label app serving the monai-diffseg bundles, with active learning from the diffusion ensemble's uncertainty.

Start (MONAI Label 0.8.5 venv activated; see the README's "MONAI Label" section)::

    monailabel start_server --app apps/monailabel --studies <images folder> \\
        --conf models all --conf zoo_source local --conf sam2 false

Settings (``--conf key value``):
    models: ``all`` (default) or comma separated bundle names from ``bundles_dir``.
    bundles_dir: folder of the bundles (default: ``bundles/`` of the repository this app is in). Each served bundle's
        ``configs/``, ``docs/`` and ``LICENSE`` are copied into ``<app>/model/<name>`` at every start; the checkpoint
        goes to ``<app>/model/<name>/models/model.pt`` (a bundle without one is a trainer only until a restart).
    overrides: JSON file of per-bundle config overrides (:func:`lib.bundles.load_overrides`).
    uncertainty_map: ``entropy`` (default) or ``mutual_information``: the map stored for each /infer.
    scoring_models: models scored for active learning (default: every model with a checkpoint).
    scoring_max_samples: score at most this many images per /scoring request (default 0: all).
    al_model, al_score: defaults of the ``ensemble_uncertainty`` strategy (first scoring model,
        ``mutual_information``).
    skip_trainers: ``true`` to serve inference only.

Uncertainty of the last /infer: the result JSON (``params``) has ``ensemble_uncertainty`` with the image's
``entropy``, ``mutual_information``, ``sample_diversity`` and ``label_tag``; for an image of the datastore the
8-bit map (255 = log 2 nats) is saved as its label with tag ``uncertainty``: ``GET /datastore/label?label=<image
id>&tag=uncertainty``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import monailabel
from lib.bundles import discover_bundles, load_overrides, prepare_bundles, select_bundles
from lib.infer import DiffusionBundleInferTask
from lib.scoring import EnsembleUncertaintyScoring
from lib.strategy import EnsembleUncertaintyStrategy
from lib.train import DiffusionBundleTrainTask
from lib.uncertainty import INFO_KEY
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

#: datastore label tag of the uncertainty map of the last /infer of an image.
UNCERTAINTY_TAG = "uncertainty"
#: name of the active-learning strategy.
STRATEGY = "ensemble_uncertainty"


class DiffSegApp(MONAILabelApp):
    """Every bundle of ``bundles_dir`` as a MONAI Label model and trainer; ensemble-uncertainty scoring and strategy."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        default_bundles = os.path.normpath(os.path.join(app_dir, "..", "..", "bundles"))
        self.bundles_dir = conf.get("bundles_dir") or default_bundles
        self.model_dir = os.path.join(app_dir, "model")
        names = select_bundles(discover_bundles(self.bundles_dir), conf.get("models", "all"))
        self.models = prepare_bundles(self.bundles_dir, self.model_dir, names)
        self.overrides = load_overrides(conf.get("overrides"), names)
        logger.info(f"+++ Serving bundles from {self.bundles_dir} in {self.model_dir}: {names}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"monai-diffseg: diffusion segmentation bundles (MONAI Label {monailabel.__version__})",
            description="MedSegDiff / DiffSeg bundles with active learning from the ensemble's own uncertainty",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            task = DiffusionBundleInferTask(
                path,
                self.conf,
                overrides=self.overrides[name]["inference"],
                uncertainty_map=self.conf.get("uncertainty_map", "entropy"),
            )
            if task.is_valid():
                logger.info(f"+++ Adding Inferer:: {name} => {path}")
                infers[name] = task
            else:
                logger.warning(f"+++ No inferer for {name}: put its checkpoint at {path}/models/model.pt")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.models.items():
            task = DiffusionBundleTrainTask(path, self.conf, overrides=self.overrides[name]["train"])
            if task.is_valid():
                logger.info(f"+++ Adding Trainer:: {name} => {path}")
                trainers[name] = task
        return trainers

    def _scoring_models(self) -> list[str]:
        requested = self.conf.get("scoring_models")
        if not requested:
            return list(self._infers)
        names = [n.strip() for n in requested.split(",") if n.strip()]
        missing = [n for n in names if n not in self._infers]
        if missing:
            raise ValueError(
                f"--conf scoring_models {requested!r}: {missing} have no inferer (no checkpoint?); "
                f"models with a checkpoint: {list(self._infers)}."
            )
        return names

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        scoring = self._scoring_models()
        model = self.conf.get("al_model") or (scoring[0] if scoring else None)
        if model:
            strategies[STRATEGY] = EnsembleUncertaintyStrategy(model, self.conf.get("al_score", "mutual_information"))
        logger.info(f"Active Learning Strategies:: {list(strategies)}")
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        max_samples = int(self.conf.get("scoring_max_samples", "0"))
        methods: dict[str, ScoringMethod] = {
            name: EnsembleUncertaintyScoring(self._infers[name], name, max_samples)  # type: ignore[arg-type]
            for name in self._scoring_models()
        }
        logger.info(f"Active Learning Scoring Methods:: {list(methods)}")
        return methods

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's /infer, then the uncertainty map moved into the datastore (label tag ``uncertainty``)."""
        result = super().infer(request, datastore)
        info = (result.get("params") or {}).get(INFO_KEY)
        if not isinstance(info, dict) or not info.get("file"):
            return result
        path = info.pop("file")
        info["label_tag"] = None
        try:
            image = request.get("image")
            store = datastore if datastore else self.datastore()
            from_datastore = isinstance(image, str) and not os.path.exists(image) and image in store.list_images()
            if from_datastore and strtobool(str(request.get("save_uncertainty", "true"))):
                store.save_label(image, path, UNCERTAINTY_TAG, {"model": request.get("model"), "map": info.get("map")})
                info["label_tag"] = UNCERTAINTY_TAG
        finally:
            os.remove(path)
        return result
