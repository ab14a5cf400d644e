# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Shared helpers of the benchmark scripts: machine description, peak memory, timing, table printing."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["PeakMemory", "machine_info", "print_table", "resolve_device", "synchronize", "timed", "write_json"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} requested but no CUDA device is available.")
    return torch.device(name)


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, core count, torch threads and versions, GPU name when used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    # hand freed heap back to the OS so the next measurement's RSS baseline is not inflated by the last one
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """
    Peak memory of a block: CUDA ``max_memory_allocated`` above the allocation at entry, or on CPU the peak resident
    set size above the RSS at entry (sampled every 2 ms by a thread; an approximation of the block's working set).

    Attributes:
        peak_mib: measured peak in MiB after the block exits.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self._base = self._peak = _rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            peak = max(self._peak, _rss_bytes()) - self._base
        self.peak_mib = max(peak, 0) / 2**20


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()`` with device synchronisation on both ends."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], title: str = "") -> None:
    """Print ``rows`` as a fixed-width table; ``columns`` = (key, header, format spec)."""
    if title:
        print(f"\n{title}")
    cells = [[format(r.get(k, ""), f) if r.get(k, "") != "" else "" for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)), flush=True)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (atomically: temporary file + rename)."""
    from monai_diffseg.utils import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"\nwrote {path}")
