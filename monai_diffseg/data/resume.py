# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Resumable dataset-scale inference: every finished case leaves one JSON line (its per-case scores) in a per-rank file
``<records_dir>/rank<R>.jsonl``, appended after the case's output files are written
(:class:`monai_diffseg.handlers.CaseMetricsWriter` with ``records_dir``). A re-run with ``skip_existing`` drops the
cases that have a record from the data list before the dataset is built, and the final ``metrics.json`` is merged
from all records, so the scores of skipped cases are still in it.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch.distributed as dist

from monai_diffseg.utils import as_flag

__all__ = ["append_case_records", "case_id", "read_case_records", "resume_datalist", "shard_datalist"]

logger = logging.getLogger(__name__)


def case_id(item: Mapping[str, Any]) -> str:
    """
    A data-list item's case name, as :class:`monai_diffseg.handlers.CaseMetricsWriter` names its record: the item's
    ``"case"`` string when it has one (every ``monai_diffseg.data`` builder sets it), else the image file's stem (the
    first file's for a list of modalities).
    """
    if isinstance(item.get("case"), str):
        return item["case"]
    image = item.get("image")
    image = image[0] if isinstance(image, (list, tuple)) and image else image
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(
            f"case_id: the data-list item {dict(item)!r} has neither a 'case' string nor an 'image' path to name it by."
        )
    return os.path.splitext(os.path.basename(os.fspath(image)))[0]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def read_case_records(records_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """
    ``{case: record}`` from every ``*.jsonl`` file in ``records_dir`` (any earlier world size); a later line of the same
    case replaces an earlier one; a torn last line (a run killed while writing it) is ignored, so that case counts as
    not done. A missing folder gives ``{}``.
    """
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(records_dir), "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning(f"{path}:{number}: an incomplete record (interrupted run?) is ignored.")
                    continue
                if isinstance(record, dict) and isinstance(record.get("case"), str):
                    records[record["case"]] = record
    return records


def append_case_records(records_dir: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """
    Append ``records`` (one JSON line each) to this rank's ``rank<R>.jsonl`` in ``records_dir``, flushed to disk; after
    a torn last line (a killed run) on a new line, so the torn line alone is lost.
    """
    if not records:
        return
    os.makedirs(records_dir, exist_ok=True)
    path = os.path.join(os.fspath(records_dir), f"rank{_rank()}.jsonl")
    with open(path, "a+b") as f:
        torn = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"  # killed run
        text = ("\n" if torn else "") + "".join(json.dumps(dict(r)) + "\n" for r in records)
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def resume_datalist(
    datalist: Sequence[Mapping[str, Any]], records_dir: str | os.PathLike, skip_existing: bool | str = False
) -> list[Mapping[str, Any]]:
    """
    The cases of ``datalist`` still to run, in data-list order. Call it once on every rank before the dataset is
    built (a bundle's ``dataset#data``); the ranks wait for each other at the end, so no rank writes a record while
    another is still reading them.

    Args:
        datalist: the whole data list.
        records_dir: the per-case records folder of the run (the writer's ``records_dir``).
        skip_existing: ``True``: drop the cases that have a record (finished in an earlier, maybe killed, run; a record
            is written after the case's output files, so its outputs are complete); ``False``: a fresh run: rank 0
            deletes the earlier records and every case runs.

    Returns:
        the data-list items to run.
    """
    records_dir = os.fspath(records_dir)
    if not as_flag(skip_existing, "skip_existing"):  # `--skip_existing false` arrives as a string
        if _rank() == 0:
            for path in glob.glob(os.path.join(records_dir, "*.jsonl")):
                os.remove(path)
        pending = list(datalist)
    else:
        done = read_case_records(records_dir)
        pending = [item for item in datalist if case_id(item) not in done]
        if _rank() == 0:
            logger.info(
                f"skip_existing: {len(datalist) - len(pending)} of {len(datalist)} cases already have their outputs and "
                f"records in '{records_dir}'; running the other {len(pending)}."
            )
    if _distributed():
        dist.barrier()
    return pending


def shard_datalist(
    datalist: Sequence[Mapping[str, Any]], rank: int | None = None, world_size: int | None = None
) -> list[Mapping[str, Any]]:
    """
    This rank's share of ``datalist``: items ``rank, rank + W, rank + 2W, ...`` (the order of MONAI's
    ``DistributedSampler(shuffle=False, even_divisible=False)``), so the ranks together run every case exactly once.
    Unlike that sampler it accepts fewer cases than ranks (the last cases of a resumed run): a rank may get none.

    Args:
        datalist: the cases to run (e.g. :func:`resume_datalist`'s).
        rank, world_size: ``None``: the process group's (a single process: 0 and 1).
    """
    world = world_size if world_size is not None else (dist.get_world_size() if dist.is_initialized() else 1)
    index = rank if rank is not None else _rank()
    if not 0 <= index < world:
        raise ValueError(f"shard_datalist: rank {index} is not in [0, {world}) (world_size {world}).")
    return list(datalist)[index::world]
