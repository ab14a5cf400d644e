# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""SkipFailedDataLoader (skip and report unreadable cases) and CheckedCacheDataset (one error listing them all)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from monai.data import Dataset
from monai.transforms import Transform

from monai_diffseg.data import CheckedCacheDataset, SkipFailedDataLoader


class _FailOn(Transform):
    """Returns {"image": tensor filled with the case number}; raises for the listed cases."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def __call__(self, item: dict) -> dict:
        n = int(item["case"].split("_")[1])
        if n in self.bad:
            raise OSError(f"image file is truncated: {item['image']}")
        return {"image": torch.full((1, 4, 4), float(n)), "case": item["case"]}


def _data(n: int) -> list[dict]:
    return [{"case": f"case_{i}", "image": f"/data/img_{i}.png"} for i in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skips_failed_cases_and_keeps_order(num_workers: int) -> None:
    loader = SkipFailedDataLoader(Dataset(_data(7), _FailOn({1, 2, 5})), batch_size=2, num_workers=num_workers)
    batches = list(loader)
    seen = [int(v) for b in batches for v in b["image"][:, 0, 0, 0]]
    assert seen == [0, 3, 4, 6]  # data-list order, the good cases only
    assert [b["image"].shape[0] for b in batches] == [2, 2]  # batches are filled with good cases
    assert [f["case"] for f in loader.failed] == ["case_1", "case_2", "case_5"]
    assert loader.failed[0]["files"] == ["/data/img_1.png"] and "truncated" in loader.failed[0]["reason"]
    assert loader.num_cases == 7
    list(loader)  # a second pass starts a fresh failure list
    assert len(loader.failed) == 3


def test_without_skipping_the_first_failure_stops_with_its_file() -> None:
    loader = SkipFailedDataLoader(Dataset(_data(4), _FailOn({2})), batch_size=1, skip_failed=False)
    with pytest.raises(RuntimeError, match=r"case 'case_2' \(/data/img_2.png\).*truncated.*skip_failed=True"):
        list(loader)


def test_all_cases_failing_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="none of the 3 cases"):
        list(SkipFailedDataLoader(Dataset(_data(3), _FailOn({0, 1, 2})), batch_size=2))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SkipFailedDataLoader(Dataset(_data(1)), batch_size=0)
    with pytest.raises(ValueError, match="shuffle"):
        SkipFailedDataLoader(Dataset(_data(1)), shuffle=True)


def test_checked_cache_dataset_lists_every_bad_case() -> None:
    with pytest.raises(ValueError) as err:
        CheckedCacheDataset(_data(6), _FailOn({1, 4}), cache_rate=1.0, num_workers=2, progress=False)
    text = str(err.value)
    assert "2 of 6 cases" in text and "case_1 (/data/img_1.png)" in text and "case_4 (/data/img_4.png)" in text
    good = CheckedCacheDataset(_data(3), _FailOn(set()), cache_rate=1.0, num_workers=2, progress=False)
    assert [int(good[i]["image"][0, 0, 0]) for i in range(3)] == [0, 1, 2]


def test_bad_training_file_exits_with_1_and_the_message(tmp_path: Path) -> None:
    """MONAI's CacheDataset aborts with exit code 134 here (4 runs in 4 on a 2-core VM): the error leaves its thread
    pool while the other threads are still inside torch operators. CheckedCacheDataset exits with 1 and the case."""
    script = tmp_path / "cache.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, torch
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_robust_loading import _FailOn, _data
            from monai_diffseg.data import CheckedCacheDataset

            class Busy(_FailOn):  # keeps the cache threads inside a torch operator
                def __call__(self, item):
                    torch.nn.functional.interpolate(torch.rand(1, 3, 512, 512), size=(1024, 1024), mode="bilinear")
                    return super().__call__(item)

            CheckedCacheDataset(_data(64), Busy({{3}}), cache_rate=1.0, num_workers=4, progress=False)
            """
        )
    )
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr[-2000:]
        assert "case_3 (/data/img_3.png)" in run.stderr
