# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""A :class:`monai.data.CacheDataset` that reports every case it cannot cache, after its threads have finished."""

from __future__ import annotations

from typing import Any

from monai.data import CacheDataset

from monai_diffseg.utils import describe_error

from .utils import describe_case

__all__ = ["CheckedCacheDataset"]

_SHOW = 10


class _CacheFailure:
    """Placeholder for a case whose deterministic transforms raised while the cache was filled."""

    def __init__(self, index: int, error: BaseException) -> None:
        self.index = index
        self.error = error


class CheckedCacheDataset(CacheDataset):
    """
    :class:`monai.data.CacheDataset` (same arguments) that collects the cases failing while the cache is filled and
    raises one ``ValueError`` listing them all (case, files and reason), once every caching thread has finished.

    MONAI's ``CacheDataset`` lets the first error escape from its thread pool while the other threads are still
    inside torch operators; the interpreter then exits under them and about one run in two aborts with exit code 134
    (``terminate called without an active exception``). Collecting the failures also reports every bad file at once.

    Raises:
        ValueError: one or more cases could not be loaded or pre-processed.
    """

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as err:  # reported after the pool has joined, see _fill_cache
            return _CacheFailure(idx, err)

    def _fill_cache(self, indices: Any = None) -> list:
        cache = super()._fill_cache(indices)
        failures = [c for c in cache if isinstance(c, _CacheFailure)]
        if failures:
            lines = []
            for f in failures[:_SHOW]:
                case, files = describe_case(self.data[f.index], f.index)
                lines.append(f"  case {case} ({', '.join(files) or 'no file'}): {describe_error(f.error)}")
            more = f"\n  ... and {len(failures) - _SHOW} more" if len(failures) > _SHOW else ""
            raise ValueError(
                f"{len(failures)} of {len(cache)} cases could not be loaded; fix or remove them from the data:\n"
                + "\n".join(lines)
                + more
            ) from failures[0].error
        return cache
