# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Per-case scores of an evaluation/inference run, computed by metric objects and written once (JSON + CSV)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.metrics import CumulativeIterationMetric, DiceMetric, MeanIoU
from monai.utils import IgniteInfo, convert_to_tensor, min_version, optional_import

from monai_diffseg.metrics import GeneralizedEnergyDistanceMetric, SampleDiversityMetric
from monai_diffseg.utils import atomic_write

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseMetricsWriter"]


def _value(x: Any) -> float | None:
    """Mean of a score tensor as a float; ``None`` when undefined (NaN or infinite, e.g. HD95 of an empty mask)."""
    v = float(convert_to_tensor(x, dtype=torch.float32, track_meta=False).nanmean())
    return v if math.isfinite(v) else None


class CaseMetricsWriter:
    """
    Score every case of an evaluator run and write ``metrics.json`` (per-case scores, their means, the engine's
    aggregate metrics and the cases a :class:`monai_diffseg.data.SkipFailedDataLoader` could not read, under
    ``"failed"``) and optionally the per-case table as CSV. Each score is computed once, by a metric object:

    - ``dice``, ``iou``: MONAI ``DiceMetric`` / ``MeanIoU`` on the binary prediction and label at the original size
      (both-empty counts as 1, as ISIC's evaluation does; ``null`` without a label);
    - ``sample_diversity`` (mean ``1 - IoU`` between members), ``sample_diversity_l2`` (DiffSeg's "GED" term):
      :class:`~monai_diffseg.metrics.SampleDiversityMetric` on the ensemble samples;
    - ``ged``: :class:`~monai_diffseg.metrics.GeneralizedEnergyDistanceMetric` (GED^2, PHiSeg/BerDiff/CIMD
      convention) between the samples and the reference at the samples' resolution, when a reference exists;
    - any score an attached MONAI metric handler computes (``save_details=True``), read from
      ``engine.state.metric_details`` instead of computed again (``engine_metrics``).

    Args:
        output_file: path of the JSON file (written atomically at ``COMPLETED``).
        csv_file: optional path of a CSV with one row per case.
        pred_key: key of the binary prediction ``(C, *S)`` at the label's size.
        label_key: key of the binary label ``(C, *S)``.
        samples_key: key of the ensemble samples ``(E, C, *S')`` (probabilities); ``None`` skips ensemble scores.
        reference_key: key of the reference at the samples' resolution ``(C, *S')`` or ``(R, C, *S')`` for GED.
        image_key: key whose metadata names the case (file stem), unless the item has a ``"case"`` string (the data
            lists' case id), which is used instead.
        threshold: probability from which a member is foreground for the IoU-based ensemble scores.
        include_background: passed to the metrics (keep True for one-channel masks).
        engine_metrics: ``{score name: engine metric name}`` to read instead of computing, e.g.
            ``{"dice": "test_mean_dice", "hd95": "test_hd95"}``.
        channel_names: one name per prediction channel (e.g. ``["disc", "cup"]``): ``dice`` and ``iou`` stay the
            mean over channels and ``dice_<name>`` / ``iou_<name>`` are added per channel (likewise for the
            ``engine_metrics`` with one value per channel, e.g. ``hd95_tc``).
        case_scores: callables ``f(item) -> {score: float | None}`` given each case's merged input/output dict
            (after post-processing, e.g. ``pred``, ``label``, ``samples``, task-specific keys); their scores are
            added to the case's record (task measures such as the cup-to-disc ratio error or multi-rater scores).
    """

    def __init__(
        self,
        output_file: str | os.PathLike,
        csv_file: str | os.PathLike | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        samples_key: str | None = "samples",
        reference_key: str | None = "label_net",
        image_key: str = "image",
        threshold: float = 0.5,
        include_background: bool = True,
        engine_metrics: Mapping[str, str] | None = None,
        channel_names: Sequence[str] | None = None,
        case_scores: Sequence[Callable[[Mapping[str, Any]], Mapping[str, float | None]]] | None = None,
    ) -> None:
        self.output_file, self.csv_file = output_file, csv_file
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.samples_key, self.reference_key = samples_key, reference_key
        self.threshold = threshold
        self.engine_metrics = dict(engine_metrics or {})
        self.channel_names = list(channel_names) if channel_names else None
        self.case_scores = list(case_scores or [])
        bg = include_background
        # ignore_empty=False: an empty prediction of an empty label is a perfect score, not NaN
        self.label_metrics: dict[str, CumulativeIterationMetric] = {
            "dice": DiceMetric(include_background=bg, reduction="none", ignore_empty=False),
            "iou": MeanIoU(include_background=bg, reduction="none", ignore_empty=False),
        }
        self.sample_metrics: dict[str, CumulativeIterationMetric] = {
            "sample_diversity": SampleDiversityMetric("1-iou", include_background=bg, reduction="none"),
            "sample_diversity_l2": SampleDiversityMetric("l2", include_background=bg, reduction="none"),
        }
        self.ged = GeneralizedEnergyDistanceMetric(include_background=bg, reduction="none")
        self.cases: list[dict[str, Any]] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases = []
        for metric in (*self.label_metrics.values(), *self.sample_metrics.values(), self.ged):
            metric.reset()

    def _collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        outputs, batches = (output, batch) if isinstance(output, list) else ([output], [batch])
        # post-processing writes new keys into the output and updated input keys (label_net) into the batch
        for out, inp in zip(outputs, batches if isinstance(batches, list) else [None] * len(outputs)):
            item = {**inp, **out} if isinstance(inp, Mapping) else out
            if item.get(self.pred_key) is None:
                continue
            img = item.get(self.image_key)
            src = img.meta.get("filename_or_obj", "") if isinstance(img, MetaTensor) else ""
            stem = os.path.splitext(os.path.basename(str(src)))[0] if src else f"case_{id(item)}"
            if isinstance(item.get("case"), str):  # the data list's case id, when it has one (QUBIQ: */image.png)
                stem = item["case"]
            record: dict[str, Any] = {"case": stem}
            label = item.get(self.label_key)
            computed = {k: m for k, m in self.label_metrics.items() if k not in self.engine_metrics}
            if label is not None and computed:
                p = convert_to_tensor(item[self.pred_key], dtype=torch.float32, track_meta=False)[None]
                y = convert_to_tensor(label, dtype=torch.float32, track_meta=False).to(p.device)[None]
                if p.shape != y.shape:
                    raise ValueError(
                        f"CaseMetricsWriter: prediction {tuple(p.shape[1:])} and label {tuple(y.shape[1:])} of case "
                        f"'{stem}' differ; invert the preprocessing (Invertd) before scoring."
                    )
            for name, metric in computed.items():
                score = None if label is None else metric(p, y)  # (1, C)
                if score is not None and self.channel_names and score.shape[1] != len(self.channel_names):
                    raise ValueError(
                        f"CaseMetricsWriter: channel_names {self.channel_names} name {len(self.channel_names)} "
                        f"channels but case '{stem}' has {score.shape[1]} ({self.pred_key} {tuple(p.shape[1:])})."
                    )
                record[name] = None if score is None else _value(score)
                for c, channel in enumerate(self.channel_names or []):
                    record[f"{name}_{channel}"] = None if score is None else _value(score[:, c])
            samples = item.get(self.samples_key) if self.samples_key else None
            if samples is not None:
                soft = convert_to_tensor(samples, dtype=torch.float32, track_meta=False)[None]
                hard = (soft >= self.threshold).float()
                record["sample_diversity"] = _value(self.sample_metrics["sample_diversity"](hard))
                record["sample_diversity_l2"] = _value(self.sample_metrics["sample_diversity_l2"](soft))
                ref = item.get(self.reference_key) if self.reference_key else None
                if ref is not None:
                    ref = (convert_to_tensor(ref, dtype=torch.float32, track_meta=False) > 0.5).float()
                    ref = ref[None] if ref.ndim == hard.ndim - 2 else ref
                    record["ged"] = _value(self.ged(hard, ref[None].to(hard.device))["ged"])
            for scorer in self.case_scores:
                record.update({k: (None if v is None else _value(v)) for k, v in scorer(item).items()})
            self.cases.append(record)

    def _write(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", None) or {}  # per-case values of the metric handlers
        for score, name in self.engine_metrics.items():
            if name not in details:
                raise ValueError(
                    f"CaseMetricsWriter: engine metric '{name}' (for '{score}') has no per-case details; "
                    f"available: {sorted(details)}. Attach it with save_details=True."
                )
            values = torch.as_tensor(details[name]).reshape(len(self.cases), -1)
            for record, row in zip(self.cases, values):
                record[score] = _value(row)
                if self.channel_names and row.numel() == len(self.channel_names):  # per channel, e.g. hd95_tc
                    record.update({f"{score}_{c}": _value(v) for c, v in zip(self.channel_names, row)})
        scores = [k for k in dict.fromkeys(k for c in self.cases for k in c) if k != "case"]

        def mean(name: str) -> float | None:
            vals = [c[name] for c in self.cases if c.get(name) is not None]
            return sum(vals) / len(vals) if vals else None

        failed = list(getattr(engine.data_loader, "failed", None) or [])  # SkipFailedDataLoader's skipped cases
        payload: dict[str, Any] = {
            "num_cases": len(self.cases),
            "num_labelled": sum(c.get("dice") is not None for c in self.cases),
            **{f"mean_{k}": mean(k) for k in scores},
            "engine_metrics": {k: _value(v) for k, v in engine.state.metrics.items() if _is_number(v)},
            "cases": self.cases,
            "num_failed": len(failed),
            "failed": failed,
        }
        with atomic_write(self.output_file) as f:
            json.dump(payload, f, indent=2)
        if self.csv_file:
            with atomic_write(self.csv_file, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["case", *scores], extrasaction="ignore")
                writer.writeheader()
                for case in self.cases:
                    writer.writerow({k: ("" if case.get(k) is None else case[k]) for k in ["case", *scores]})
        means = ", ".join(f"mean {k} {payload[f'mean_{k}']:.4f}" for k in scores if payload[f"mean_{k}"] is not None)
        self.logger.info(f"{len(self.cases)} cases ({payload['num_labelled']} labelled): {means} -> {self.output_file}")
        if failed:
            self.logger.warning(
                f"{len(failed)} case(s) could not be read and were skipped (listed under 'failed' in "
                f"{self.output_file}): {', '.join(c['case'] for c in failed[:5])}{' ...' if len(failed) > 5 else ''}"
            )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
