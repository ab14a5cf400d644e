# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""A data loader for inference over real archives: a case that cannot be read is logged and skipped, not fatal."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from monai.data import DataLoader, list_data_collate
from monai.data.utils import no_collation
from torch.utils.data import Dataset as TorchDataset

from monai_diffseg.utils import as_flag, describe_error

from .utils import describe_case

__all__ = ["SkipFailedDataLoader"]

logger = logging.getLogger(__name__)


@dataclass
class _Failure:
    """A case whose loading or pre-processing raised; picklable so it crosses from the loader's workers."""

    case: str
    files: list[str]
    reason: str


class _CatchFailures(TorchDataset):
    """Return a :class:`_Failure` instead of raising, so one bad case does not stop the loader's workers."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as err:
            data = getattr(self.dataset, "data", None)
            case, files = describe_case(data[index] if data is not None else None, index)
            return _Failure(case, files, describe_error(err))


class SkipFailedDataLoader:
    """
    Batches of the cases of ``dataset`` that load, in data-list order; a case whose loading or pre-processing raises
    is logged with its files and the reason, listed in :attr:`failed` (``{"case", "files", "reason"}`` dicts, which
    :class:`monai_diffseg.handlers.CaseMetricsWriter` writes under ``"failed"`` in ``metrics.json``) and skipped, so
    one unreadable file among thousands costs that case, not the run.

    Items are loaded one by one by a :class:`monai.data.DataLoader` (``num_workers`` pre-fetch in parallel as usual)
    and collated here into batches of ``batch_size`` good cases. The loader has no ``len()`` (the number of batches is
    known only once the failures are; ignite engines end the epoch when the iterator stops); :attr:`num_cases` gives
    the number of cases.

    Args:
        dataset: a map-style dataset, e.g. :class:`monai.data.Dataset`; its ``data`` list names failed cases.
        batch_size: cases per batch.
        num_workers: loader worker processes.
        collate_fn: collates a list of good cases, e.g. :func:`monai.data.pad_list_data_collate` for mixed sizes.
        skip_failed: skip and record failing cases; ``False`` raises at the first one.
        kwargs: other :class:`monai.data.DataLoader` arguments (``sampler``, ``pin_memory`` ...); ``shuffle``,
            ``drop_last`` and ``batch_sampler`` are not supported (inference keeps every case, in order).

    Raises:
        RuntimeError: while iterating, a case fails and ``skip_failed`` is False, or every case failed.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        num_workers: int = 0,
        collate_fn: Callable[[list], Any] = list_data_collate,
        skip_failed: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        for unsupported in ("shuffle", "drop_last", "batch_sampler"):
            if kwargs.get(unsupported):
                raise ValueError(f"SkipFailedDataLoader does not support '{unsupported}' (inference keeps every case).")
            kwargs.pop(unsupported, None)
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.skip_failed = as_flag(skip_failed, "skip_failed")
        self.failed: list[dict[str, Any]] = []
        # batch_size=None: the workers return single items; batches are formed here from the good ones
        self.loader = DataLoader(
            _CatchFailures(dataset), batch_size=None, num_workers=num_workers, collate_fn=no_collation, **kwargs
        )

    @property
    def num_cases(self) -> int:
        """Number of cases the loader visits (failed ones included)."""
        sampler = getattr(self.loader, "sampler", None)
        return len(sampler) if sampler is not None else len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        self.failed = []
        batch: list = []
        loaded = False
        for item in self.loader:
            if isinstance(item, _Failure):
                message = f"case '{item.case}' ({', '.join(item.files) or 'no file'}) failed: {item.reason}"
                if not self.skip_failed:
                    raise RuntimeError(f"{message}. Set skip_failed=True to skip such cases and finish the others.")
                logger.warning("skipping %s", message)
                self.failed.append(asdict(item))
                continue
            loaded = True
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self.collate_fn(batch)
                batch = []
        if batch:
            yield self.collate_fn(batch)
        if not loaded and self.failed:
            raise RuntimeError(
                f"none of the {len(self.failed)} cases could be read; the first failure: case "
                f"'{self.failed[0]['case']}': {self.failed[0]['reason']}"
            )
