# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The issue-16 measurement helpers of benchmarks/quality.py, anchor_sweep.py and bench_sampling.py."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy.stats import wilcoxon

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(BENCH / f"{name}.py")))


def test_fused_vs_anchor_pairing_counts_and_wilcoxon():
    quality = _load("quality")
    cases = [
        {"case": "a", "dice": 0.9, "anchor_dice": 0.8},
        {"case": "b", "dice": 0.7, "anchor_dice": 0.75},
        {"case": "c", "dice": 0.6, "anchor_dice": 0.6},
        {"case": "d", "dice": 0.95, "anchor_dice": 0.85},
        {"case": "e", "dice": None, "anchor_dice": 0.5},  # not scored: left out
    ]
    out = quality._anchor_paired(cases)
    assert (out["cases"], out["ours_better"], out["ties"]) == (4, 2, 1)
    assert out["mean_difference"] == pytest.approx((0.1 - 0.05 + 0.0 + 0.1) / 4)
    assert out["wilcoxon_p"] == pytest.approx(float(wilcoxon([0.1, -0.05, 0.0, 0.1]).pvalue))
    assert quality._anchor_paired(cases[:2]) is None  # fewer than 3 pairs


def test_pair_with_reads_an_earlier_report_of_the_same_split(tmp_path):
    quality = _load("quality")
    report = {"split": {"test_cases": ["a", "b", "c"]}, "models": {"baseline": {"cases": [{"case": "a", "dice": 0.5}]}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert quality._report_cases(f"{path}:baseline", ["a", "b"]) == [{"case": "a", "dice": 0.5}]
    with pytest.raises(ValueError, match="not among its test cases"):
        quality._report_cases(f"{path}:baseline", ["a", "z"])
    with pytest.raises(ValueError, match="has no 'medsegdiff'"):
        quality._report_cases(f"{path}:medsegdiff", ["a"])
    with pytest.raises(ValueError, match="REPORT.json:MODEL"):
        quality._report_cases(str(path), ["a"])


def test_network_evaluations_per_member_from_the_grid():
    bench = _load("bench_sampling")
    # MONAI's 20-step DDIM grid is 999, 946, ..., 53, 0: t_start 263 keeps 263, 210, 158, 105, 53, 0
    assert bench.network_evaluations("ddim", 20, {"init": "anchor", "t_start": 263}) == 6
    assert bench.network_evaluations("ddim", 20, {"init": "noise", "t_start": None}) == 20
    assert bench.network_evaluations("ddim", 1, {"init": "anchor", "t_start": 263}) == 1  # one step from t_start
    sweep = _load("anchor_sweep")
    assert sweep.parse_config("a:init=anchor,t_start=263,members=10") == (
        "a",
        {"init": "anchor", "t_start": 263, "members": 10},
    )
    with pytest.raises(ValueError, match="key=value"):
        sweep.parse_config("a:steps")
