# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The speed benchmark scripts run end to end on tiny settings and report consistent numbers."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> SimpleNamespace:
    """A benchmark script's globals, without running its ``main``."""
    return SimpleNamespace(**runpy.run_path(str(BENCH / f"{name}.py")))


def test_bench_sampling_rows_reference_and_extrapolation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = _load("bench_sampling")
    out = tmp_path / "sampling.json"
    result = bench.main(
        [
            "--device",
            "cpu",
            "--config",
            "tiny",
            "--sizes",
            "32",
            "--size-3d",
            "0",
            "--members",
            "1",
            "2",
            "--steps",
            "2",
            "6",
            "--samplers",
            "ddim",
            "dpm++",
            "--max-measured-steps",
            "3",
            "--reference-steps",
            "3",
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "sampling results" in printed and "reference" in printed
    rows = result["rows"]
    ours = [r for r in rows if r["sampler"] != "reference"]
    refs = {r["members"]: r for r in rows if r["sampler"] == "reference"}
    assert len(ours) == 2 * 2 * 2 and set(refs) == {1, 2}
    # the reference row: members x 1000 steps with the condition recomputed each step
    assert refs[2]["s_per_image"] == pytest.approx(2 * refs[1]["s_per_image"])
    assert all(r["extrapolated"] for r in refs.values())
    for r in ours:
        assert r["extrapolated"] == (r["steps"] > 3)
        assert r["s_per_image"] > 0 and r["images_per_s"] == pytest.approx(1 / r["s_per_image"])
        assert r["speedup"] == pytest.approx(refs[r["members"]]["s_per_image"] / r["s_per_image"])
    # the timing ratio itself is the benchmark's finding (printed and recorded), not a test assertion
    assert result["min_speedup"] == min(r["speedup"] for r in ours)
    assert result["speedup_as_expected"] == (result["min_speedup"] > bench.MIN_EXPECTED_SPEEDUP)
    assert "slowest row vs the reference cost" in printed
    # extrapolated rows: one encode + per-step cost of the measured 3-step run, scaled to the row's steps
    for r in ours:
        if r["extrapolated"]:
            assert r["measured_steps"] == 3
            fixed = r["encode_s"] if r["measured_s"] > r["encode_s"] else 0.0
            expected = fixed + (r["measured_s"] - fixed) * r["steps"] / 3
            assert r["s_per_image"] == pytest.approx(expected)
    sizes = {r["config"]: r for r in result["sizes"]}
    assert sizes["tiny"]["params_m"] < sizes["small"]["params_m"] < sizes["base"]["params_m"] < 100
    assert all(r["step_gflops"] > 0 and r["cond_gflops"] > 0 for r in sizes.values())
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


def test_bench_sampling_3d_row(capsys: pytest.CaptureFixture) -> None:
    bench = _load("bench_sampling")
    result = bench.main(
        [
            "--device",
            "cpu",
            "--config",
            "tiny",
            "--sizes",
            "--size-3d",
            "32",
            "--members",
            "2",
            "--steps",
            "2",
            "--samplers",
            "ddim",
            "--no-reference",
        ]
    )
    rows = result["rows"]
    assert [(r["size"], r["members"], r["steps"]) for r in rows] == [("32^3", 2, 2)]
    # measured in full (no extrapolation): one image per call, so its time is the measured call
    assert not rows[0]["extrapolated"] and rows[0]["s_per_image"] == rows[0]["measured_s"]
    assert math.isfinite(rows[0]["peak_mib"]) and "min_speedup" not in result  # no reference row, no ratio


def test_bench_sampling_bundle_default_row(capsys: pytest.CaptureFixture) -> None:
    """--bundle-default: the ISIC 2018 bundle's sampler (inference.json) as a row like the others, with its start."""
    bench = _load("bench_sampling")
    argv = ["--device", "cpu", "--config", "tiny", "--sizes", "32", "--size-3d", "0", "--members", "1", "--steps", "2"]
    result = bench.main([*argv, "--samplers", "ddim", "--reference-steps", "2", "--batch", "2", "--bundle-default"])
    name, steps, members = bench.bundle_default_sampler()
    options = bench.bundle_default_options()
    rows = result["rows"]
    (ref,) = [r for r in rows if r["sampler"] == "reference"]
    (ours,) = [r for r in rows if r["sampler"] == "ddim"]
    (row,) = [r for r in rows if r["sampler"] == "bundle default"]
    assert (row["size"], row["members"], row["steps"]) == ("32x32", members, steps)
    assert row["nfe"] == bench.network_evaluations(name, steps, options)
    assert {k: row[k] for k in options} == options
    # measured in full; two images per call; the speed-up over the reference cost of the same ensemble size
    assert not row["extrapolated"] and row["s_per_image"] == pytest.approx(row["measured_s"] / 2)
    assert row["images_per_s"] == pytest.approx(1 / row["s_per_image"])
    assert row["speedup"] == pytest.approx(ref["s_per_image"] * members / row["s_per_image"])
    # the fields of the other rows of ours, less the extrapolation's, plus the start
    assert set(row) == set(ours) - {"measured_steps", "encode_s"} | {"nfe", *options}
    assert "bundle default (" in capsys.readouterr().out


def test_bench_training_rows(capsys: pytest.CaptureFixture) -> None:
    bench = _load("bench_training")
    result = bench.main(
        [
            "--device",
            "cpu",
            "--models",
            "tiny",
            "unet-baseline",
            "--sizes",
            "32",
            "--batch-sizes",
            "1",
            "2",
            "--iterations",
            "2",
        ]
    )
    rows = result["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("tiny", 1),
        ("tiny", 2),
        ("unet-baseline", 1),
        ("unet-baseline", 2),
    ]
    for r in rows:
        assert r["it_per_s"] > 0 and r["images_per_s"] == pytest.approx(r["it_per_s"] * r["batch"])
    assert "training iterations" in capsys.readouterr().out
