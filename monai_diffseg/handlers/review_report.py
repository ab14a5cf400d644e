# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Write the HTML review page (``report.html``) at the end of an evaluation run."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from monai.config import PathLike
from monai.utils import IgniteInfo, min_version, optional_import

from monai_diffseg.utils import as_flag
from monai_diffseg.visualize.report import case_sources, write_report

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ReviewReportWriter"]


class ReviewReportWriter:
    """
    At ``COMPLETED``, on rank 0 only, write ``report.html`` into ``output_dir`` with
    :func:`monai_diffseg.visualize.write_report`, from the ``metrics.json`` and the maps the run wrote. Attach it
    after the :class:`CaseMetricsWriter` (handlers run in order), so it reads the finished (in sharded runs: merged)
    file. The same page can be rebuilt later with ``python -m monai_diffseg.visualize.report <output_dir>``.
    Without a metrics file (e.g. a sharded run that writes per-rank files and merges none) it logs a warning and
    writes nothing, rather than failing a finished run; other errors are raised.

    Args:
        output_dir: the run's output folder.
        datalist: the bundle's data list; its ``"image"`` (and ``"label"``) files become the report's source images
            (:func:`monai_diffseg.visualize.case_sources`).
        image_dir: folder searched for source images of cases the data list lacks (the bundle's ``dataset_dir``).
        enabled: ``False`` attaches nothing (the bundles' ``"review_report"`` option: true in ``evaluate.json``).
        report_kwargs: other :func:`~monai_diffseg.visualize.write_report` arguments (``sort_by``, ``primary``,
            ``thumb_size``, ``max_cases``, ``metrics_file``, ``report_file``, ``title``).
    """

    def __init__(
        self,
        output_dir: PathLike,
        datalist: Sequence[Mapping[str, Any]] | None = None,
        image_dir: PathLike | None = None,
        enabled: bool = True,
        **report_kwargs: Any,
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.datalist = datalist
        self.image_dir = image_dir
        self.enabled = as_flag(enabled, "review_report")
        self.report_kwargs = report_kwargs
        self.logger = logging.getLogger(__name__)
        self.report_path: str | None = None

    def attach(self, engine: Engine) -> None:
        """Register the ``COMPLETED`` handler (nothing when disabled)."""
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        try:
            self.report_path = write_report(
                self.output_dir,
                sources=case_sources(self.datalist, "image"),
                labels=case_sources(self.datalist, "label"),
                image_dir=self.image_dir,
                **self.report_kwargs,
            )
        except FileNotFoundError as err:  # no (merged) metrics file: the run's results stand, only the page is missing
            self.logger.warning(f"ReviewReportWriter: no report.html written: {err}")
