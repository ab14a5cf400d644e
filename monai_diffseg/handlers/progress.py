# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Progress of long inference/evaluation runs in cases (not iterations): log lines with done/total, elapsed and
estimated time left, plus a tqdm bar on a terminal."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from monai.utils import IgniteInfo, min_version, optional_import
from tqdm import tqdm

from monai_diffseg.utils import as_flag

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["CaseProgressHandler", "count_cases"]

# tqdm's own meter (rate and remaining time from the mean rate since the start), as a plain log line
_LOG_FORMAT = "{n_fmt}/{total_fmt} cases ({percentage:.0f}%), elapsed {elapsed}, ETA {remaining}, {rate_fmt}"
_LOG_FORMAT_NO_TOTAL = "{n_fmt} cases, elapsed {elapsed}, ETA ? (total unknown), {rate_fmt}"


def count_cases(batch: Any, output: Any = None) -> int:
    """Number of cases in one engine iteration: the length of a decollated output/batch (a list of per-case dicts,
    as :class:`monai.engines.SupervisedEvaluator` leaves them), else the first dimension of the first tensor of a
    collated batch dict ``{key: (N, ...)}``; 1 when neither tells."""
    for value in (output, batch):
        if isinstance(value, (list, tuple)):
            return len(value)
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
    return 1


def _total_cases(loader: Any) -> int | None:
    """Cases the loader visits on this rank: ``num_cases`` of :class:`monai_diffseg.data.SkipFailedDataLoader`,
    else the length of a torch loader's sampler (a ``DistributedSampler`` gives this rank's shard) or dataset."""
    if loader is None:
        return None
    if hasattr(loader, "num_cases"):
        return int(loader.num_cases)
    for attr in ("sampler", "dataset"):
        obj = getattr(loader, attr, None)
        if obj is not None:
            try:
                return len(obj)
            except TypeError:  # iterable datasets / samplers without a length
                continue
    return None


class CaseProgressHandler:
    """
    Report the progress of an inference or evaluation engine in **cases** (a batch of 4 counts 4; with
    ``batch_size > 1`` ignite's ``ProgressBar`` would count iterations): INFO log lines
    ``"<desc>: 120/609 cases (20%), elapsed 02:01, ETA 08:10, 0.99case/s"`` through ``logging`` (so they reach the
    bundle's log handlers and log files), every ``every_n_cases`` cases or every ``interval_s`` seconds, whichever
    comes first, and a final line at ``COMPLETED``; on a terminal (``sys.stderr.isatty()``) also a tqdm bar.
    The estimate is tqdm's (mean rate since the start, which includes the first batch's warm-up).

    Cases a :class:`monai_diffseg.data.SkipFailedDataLoader` skipped count as done (they are part of its total) and
    are reported as failed. In a distributed run only rank 0 reports, on its own shard (the ranks run their shards in
    parallel, so its shard's ETA is the run's); the line says so.

    Args:
        enabled: ``False`` attaches nothing (the bundles' ``"case_progress"`` option).
        total: cases expected; default from the engine's data loader (``num_cases``, or its sampler/dataset length).
        every_n_cases: log every this many cases; default a tenth of the total (at least 1); ``0`` disables.
        interval_s: also log when this many seconds passed since the last line; ``None`` or 0 disables.
        bar: show a tqdm bar on ``sys.stderr``; ``None`` shows one only when ``sys.stderr`` is a terminal.
        desc: prefix of the lines and the bar; default the engine's class name.
        name: logger name (``logging.getLogger(name)``); the bundles' ``logging.conf`` configures the root logger.

    Example (bundle config)::

        {"_target_": "monai_diffseg.handlers.CaseProgressHandler", "enabled": "@case_progress"}
    """

    def __init__(
        self,
        enabled: bool = True,
        total: int | None = None,
        every_n_cases: int | None = None,
        interval_s: float | None = 60.0,
        bar: bool | None = None,
        desc: str | None = None,
        name: str = "CaseProgress",
    ) -> None:
        if every_n_cases is not None and (not isinstance(every_n_cases, int) or every_n_cases < 0):
            raise ValueError(f"CaseProgressHandler: every_n_cases must be an int >= 0 or None, got {every_n_cases!r}.")
        if interval_s is not None and interval_s < 0:
            raise ValueError(f"CaseProgressHandler: interval_s must be >= 0 or None, got {interval_s!r}.")
        if total is not None and (not isinstance(total, int) or total < 0):
            raise ValueError(f"CaseProgressHandler: total must be an int >= 0 or None, got {total!r}.")
        self.enabled = as_flag(enabled, "case_progress")
        self.total_arg = total
        self.every_n_cases_arg = every_n_cases
        self.interval_s = interval_s or None
        self.bar_arg = bar
        self.desc = desc
        self.logger = logging.getLogger(name)
        self.total: int | None = None
        self.done = 0  # cases processed + cases the loader skipped as failed
        self._processed = 0
        self._bar: Any = None
        self._start = self._last_time = 0.0
        self._last_done = 0
        self._every = 0
        self._prefix = ""

    def attach(self, engine: Engine) -> None:
        """Register the handler's events on ``engine`` (nothing when disabled or on a rank other than 0)."""
        if not self.enabled or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.total = self.total_arg if self.total_arg is not None else _total_cases(engine.state.dataloader)
        self.done = self._last_done = self._processed = 0
        self._start = self._last_time = time.perf_counter()
        every = self.every_n_cases_arg
        self._every = every if every is not None else (max(1, math.ceil(self.total / 10)) if self.total else 0)
        desc = self.desc or type(engine).__name__
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            desc += f" (rank 0 of {dist.get_world_size()}, its shard)"
        self._prefix = desc
        show = sys.stderr.isatty() if self.bar_arg is None else self.bar_arg
        self._close_bar()
        if show:
            self._bar = tqdm(total=self.total, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True)
        self.logger.info(f"{desc}: {self.total if self.total is not None else 'an unknown number of'} cases to run")

    def _failed(self, engine: Engine) -> int:
        return len(getattr(engine.state.dataloader, "failed", None) or [])

    def _iteration_completed(self, engine: Engine) -> None:
        before = self.done
        self._processed += count_cases(engine.state.batch, engine.state.output)
        self.done = self._processed + self._failed(engine)
        if self._bar is not None:
            self._bar.update(self.done - before)
        now = time.perf_counter()
        by_count = self._every > 0 and self.done - self._last_done >= self._every
        by_time = self.interval_s is not None and now - self._last_time >= self.interval_s
        if by_count or by_time:
            self._log(engine, now)

    def _log(self, engine: Engine, now: float) -> None:
        self._last_done, self._last_time = self.done, now
        total = self.total if self.total else None
        fmt = _LOG_FORMAT if total is not None else _LOG_FORMAT_NO_TOTAL
        line = " ".join(tqdm.format_meter(self.done, total, now - self._start, unit="case", bar_format=fmt).split())
        failed = self._failed(engine)
        self.logger.info(f"{self._prefix}: {line}" + (f", {failed} failed (skipped)" if failed else ""))

    def _completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        self._close_bar()
        elapsed = tqdm.format_interval(now - self._start)
        rate = self.done / (now - self._start) if now > self._start else float("nan")
        failed = self._failed(engine)
        self.logger.info(
            f"{self._prefix}: done, {self.done} cases in {elapsed} ({rate:.3g} case/s)"
            + (f", {failed} failed (skipped)" if failed else "")
        )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
