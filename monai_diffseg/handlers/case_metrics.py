# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Per-case segmentation scores written to JSON at the end of an evaluation/inference run."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice, compute_iou
from monai.utils import IgniteInfo, min_version, optional_import

from monai_diffseg.utils import atomic_write

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseMetricsWriter", "write_json_atomic"]


def write_json_atomic(path: str, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2)


def _case_name(item: dict, image_key: str) -> str:
    img = item.get(image_key)
    name = img.meta.get("filename_or_obj", "") if isinstance(img, MetaTensor) else ""
    if not name:
        meta = item.get(f"{image_key}_meta_dict", {})
        name = meta.get("filename_or_obj", "") if isinstance(meta, dict) else ""
    return os.path.splitext(os.path.basename(str(name)))[0] if name else f"case_{id(item)}"


class CaseMetricsWriter:
    """
    Collect Dice and IoU per case during an evaluator run and write ``{"cases": [...], "mean_dice": ...}`` JSON.

    Cases that a :class:`monai_diffseg.data.SkipFailedDataLoader` could not read are listed under ``"failed"``
    (case, files, reason) with their count ``"num_failed"``.

    Works with bundles whose labels may be absent (inference on an unlabelled split): cases without a label get
    ``null`` scores and the means are computed over labelled cases only. Expects the evaluator's decollated output
    (a list of per-case dicts after postprocessing) with a binary ``pred_key`` ``(C, *S)`` and, when available, a
    binary ``label_key`` of the same shape (e.g. both at the original image resolution after ``Invertd``).

    Args:
        output_file: path of the JSON file (written atomically at ``COMPLETED``).
        pred_key: key of the binarised prediction.
        label_key: key of the binary label.
        image_key: key whose metadata gives the case name.
        include_background: passed to MONAI's ``compute_dice``/``compute_iou`` (keep True for one-channel masks).
        extra_keys: scalar per-case values already in the output dict (e.g. ``"sample_diversity"``, ``"ged"``) to
            copy into the JSON and CSV; their means are logged with the mean Dice.
        csv_file: optional path of a CSV with one row per case (written atomically at ``COMPLETED``).
    """

    def __init__(
        self,
        output_file: str,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        include_background: bool = True,
        extra_keys: Sequence[str] = (),
        csv_file: str | None = None,
    ) -> None:
        self.output_file = output_file
        self.csv_file = csv_file
        self.pred_key = pred_key
        self.label_key = label_key
        self.image_key = image_key
        self.include_background = include_background
        self.extra_keys = tuple(extra_keys)
        self.cases: list[dict[str, Any]] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            pred = item.get(self.pred_key)
            if pred is None:
                continue
            record: dict[str, Any] = {"case": _case_name(item, self.image_key), "dice": None, "iou": None}
            label = item.get(self.label_key)
            if label is not None:
                p = torch.as_tensor(pred).float()[None]
                y = torch.as_tensor(label).float().to(p.device)[None]
                if p.shape != y.shape:
                    raise ValueError(
                        f"CaseMetricsWriter: prediction {tuple(p.shape[1:])} and label {tuple(y.shape[1:])} of case "
                        f"'{record['case']}' differ; invert the preprocessing (Invertd) before scoring."
                    )
                # both-empty masks count as a perfect score, as ISIC's evaluation does
                dice = compute_dice(p, y, include_background=self.include_background, ignore_empty=False)
                iou = compute_iou(p, y, include_background=self.include_background, ignore_empty=False)
                record["dice"] = float(dice.nanmean())
                record["iou"] = float(iou.nanmean())
            for key in self.extra_keys:
                if key in item:
                    record[key] = float(torch.as_tensor(item[key]).float().mean())
            self.cases.append(record)

    def _write(self, engine: Engine) -> None:
        def mean(name: str) -> float | None:
            vals = [c[name] for c in self.cases if c.get(name) is not None and not math.isnan(c[name])]
            return sum(vals) / len(vals) if vals else None

        payload: dict[str, Any] = {
            "num_cases": len(self.cases),
            "num_labelled": sum(c["dice"] is not None for c in self.cases),
            "mean_dice": mean("dice"),
            "mean_iou": mean("iou"),
        }
        for key in self.extra_keys:
            payload[f"mean_{key}"] = mean(key)
        payload["cases"] = self.cases
        # cases that SkipFailedDataLoader could not read: reported beside the scored ones, never silently dropped
        failed = list(getattr(engine.data_loader, "failed", None) or [])
        payload["num_failed"] = len(failed)
        payload["failed"] = failed
        write_json_atomic(self.output_file, payload)
        if self.csv_file:
            self._write_csv()
        extras = ", ".join(
            f"mean {k} {payload[f'mean_{k}']:.4f}" for k in self.extra_keys if payload[f"mean_{k}"] is not None
        )
        if payload["mean_dice"] is not None:
            self.logger.info(
                f"mean Dice {payload['mean_dice']:.4f}, mean IoU {payload['mean_iou']:.4f} over "
                f"{payload['num_labelled']} labelled cases{', ' + extras if extras else ''} -> {self.output_file}"
            )
        else:
            self.logger.info(f"{len(self.cases)} cases, no labels{', ' + extras if extras else ''} -> {self.output_file}")
        if failed:
            self.logger.warning(
                f"{len(failed)} case(s) could not be read and were skipped (listed under 'failed' in "
                f"{self.output_file}): {', '.join(c['case'] for c in failed[:5])}{' ...' if len(failed) > 5 else ''}"
            )

    def _write_csv(self) -> None:
        assert self.csv_file is not None
        columns = ["case", "dice", "iou", *self.extra_keys]
        with atomic_write(self.csv_file, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for case in self.cases:
                writer.writerow({c: ("" if case.get(c) is None else case.get(c)) for c in columns})
