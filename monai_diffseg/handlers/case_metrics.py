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
import torch.distributed as dist
from monai.data import MetaTensor
from monai.metrics import CumulativeIterationMetric, DiceMetric, HausdorffDistanceMetric, MeanIoU
from monai.utils import IgniteInfo, convert_to_tensor, look_up_option, min_version, optional_import

from monai_diffseg.data.resume import append_case_records, case_id, read_case_records
from monai_diffseg.metrics import GeneralizedEnergyDistanceMetric, SampleDiversityMetric
from monai_diffseg.utils import atomic_write

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseMetricsWriter", "LABEL_SCORES"]

#: the label scores the writer computes itself (``label_scores``)
LABEL_SCORES = ("dice", "iou", "hd95")


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
      (both-empty counts as 1, as ISIC's evaluation does; ``null`` without a label); ``hd95`` (in ``label_scores``):
      ``HausdorffDistanceMetric(percentile=95)`` in pixels/voxels (``null`` where undefined, e.g. an empty mask);
    - ``sample_diversity`` (mean ``1 - IoU`` between members), ``sample_diversity_l2`` (DiffSeg's "GED" term):
      :class:`~monai_diffseg.metrics.SampleDiversityMetric` on the ensemble samples;
    - ``ged``: :class:`~monai_diffseg.metrics.GeneralizedEnergyDistanceMetric` (GED^2, PHiSeg/BerDiff/CIMD
      convention) between the samples and the reference at the samples' resolution, when a reference exists;
    - any score an attached MONAI metric handler computes (``save_details=True``), read from
      ``engine.state.metric_details`` instead of computed again (``engine_metrics``).

    Sharded (``torchrun``) and resumable runs (``records_dir``): every case's record is appended to
    ``<records_dir>/rank<R>.jsonl`` as soon as it is scored (after its output files, which the evaluator's
    post-processing writes first); at ``COMPLETED`` the ranks gather their failed cases and rank 0 merges the records of
    every rank **and of earlier runs** (the cases :func:`monai_diffseg.data.resume_datalist` skipped) into one
    ``output_file``/``csv_file``, ordered as ``case_order`` (the whole data list), with the means over the merged rows.
    The engine's aggregate metrics then cover only the cases computed in this run (``"engine_metrics"`` with
    ``"num_cases_run"``), and ``engine_metrics`` cannot be used (the per-case details exist only at the end of a run,
    so a killed run would lose them): compute the scores here instead (``label_scores``).

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
        label_scores: the label scores computed here, from :data:`LABEL_SCORES` (those named in ``engine_metrics``
            are read instead).
        records_dir: folder of the per-case records of a sharded/resumable run (see above); ``None``: one process
            writes ``output_file`` from its own cases.
        case_order: the whole data list (or its case names, :func:`monai_diffseg.data.case_id`), in order: the
            merged files list exactly these cases, in this order; ``None``: every record, sorted by case name.
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
        label_scores: Sequence[str] = ("dice", "iou"),
        records_dir: str | os.PathLike | None = None,
        case_order: Sequence[str | Mapping[str, Any]] | None = None,
    ) -> None:
        if records_dir is not None and engine_metrics:
            raise ValueError(
                f"CaseMetricsWriter: engine_metrics {dict(engine_metrics)} with records_dir '{records_dir}': engine "
                "metric details exist only at the end of a run, so a killed run could not keep them per case. Set "
                "engine_metrics={} and compute the scores in the writer (label_scores, e.g. ['dice', 'iou', 'hd95'])."
            )
        self.output_file, self.csv_file = output_file, csv_file
        self.records_dir = None if records_dir is None else os.fspath(records_dir)
        self.case_order = None if case_order is None else [c if isinstance(c, str) else case_id(c) for c in case_order]
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.samples_key, self.reference_key = samples_key, reference_key
        self.threshold = threshold
        self.engine_metrics = dict(engine_metrics or {})
        self.channel_names = list(channel_names) if channel_names else None
        self.case_scores = list(case_scores or [])
        bg = include_background
        # ignore_empty=False: an empty prediction of an empty label is a perfect score, not NaN
        available: dict[str, Callable[[], CumulativeIterationMetric]] = {
            "dice": lambda: DiceMetric(include_background=bg, reduction="none", ignore_empty=False),
            "iou": lambda: MeanIoU(include_background=bg, reduction="none", ignore_empty=False),
            "hd95": lambda: HausdorffDistanceMetric(include_background=bg, percentile=95, reduction="none"),
        }
        self.label_metrics: dict[str, CumulativeIterationMetric] = {
            name: available[look_up_option(name, LABEL_SCORES)]() for name in dict.fromkeys(label_scores)
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
        new: list[dict[str, Any]] = []
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
            new.append(record)
        if self.records_dir is not None:  # kept at once, so a killed run resumes after this batch
            append_case_records(self.records_dir, new)

    def _write(self, engine: Engine) -> None:
        failed = list(getattr(engine.data_loader, "failed", None) or [])  # SkipFailedDataLoader's skipped cases
        if self.records_dir is not None:
            self._merge(engine, failed)
            return
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
        self._dump(self.cases, failed, {k: _value(v) for k, v in engine.state.metrics.items() if _is_number(v)})

    def _merge(self, engine: Engine, failed: list[dict[str, Any]]) -> None:
        """Sharded/resumable run: gather the failed cases; rank 0 writes the files from every rank's records."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (len(self.cases), failed))  # after it, every rank's records are on disk
            num_run, failed = sum(n for n, _ in gathered), [c for _, f in gathered for c in f]
            if dist.get_rank() != 0:
                return
        else:
            num_run = len(self.cases)
        records = read_case_records(self.records_dir)  # type: ignore[arg-type]
        if self.case_order is not None:
            cases = [records[c] for c in self.case_order if c in records]
        else:
            cases = [records[c] for c in sorted(records)]
        engine_metrics = {k: _value(v) for k, v in engine.state.metrics.items() if _is_number(v)}
        self._dump(cases, failed, engine_metrics, num_cases_run=num_run)

    def _dump(
        self, cases: list[dict[str, Any]], failed: list[dict[str, Any]], engine_metrics: dict, **extra: Any
    ) -> None:
        """Write ``cases`` (in order), their means and ``failed`` to ``output_file`` (and ``csv_file``)."""
        scores = [k for k in dict.fromkeys(k for c in cases for k in c) if k != "case"]

        def mean(name: str) -> float | None:
            vals = [c[name] for c in cases if c.get(name) is not None]
            return sum(vals) / len(vals) if vals else None

        payload: dict[str, Any] = {
            "num_cases": len(cases),
            "num_labelled": sum(c.get("dice") is not None for c in cases),
            **{f"mean_{k}": mean(k) for k in scores},
            "engine_metrics": engine_metrics,
            **extra,
            "cases": cases,
            "num_failed": len(failed),
            "failed": failed,
        }
        with atomic_write(self.output_file) as f:
            json.dump(payload, f, indent=2)
        if self.csv_file:
            with atomic_write(self.csv_file, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["case", *scores], extrasaction="ignore")
                writer.writeheader()
                for case in cases:
                    writer.writerow({k: ("" if case.get(k) is None else case[k]) for k in ["case", *scores]})
        means = ", ".join(f"mean {k} {payload[f'mean_{k}']:.4f}" for k in scores if payload[f"mean_{k}"] is not None)
        self.logger.info(f"{len(cases)} cases ({payload['num_labelled']} labelled): {means} -> {self.output_file}")
        if failed:
            self.logger.warning(
                f"{len(failed)} case(s) could not be read and were skipped (listed under 'failed' in "
                f"{self.output_file}): {', '.join(c['case'] for c in failed[:5])}{' ...' if len(failed) > 5 else ''}"
            )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
