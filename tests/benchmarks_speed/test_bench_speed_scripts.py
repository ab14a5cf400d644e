# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The speed benchmark scripts run end to end on tiny settings and report consistent numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_sampling_rows_reference_and_extrapolation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = _load("bench_sampling")
    out = tmp_path / "sampling.json"
    result = bench.main([
        "--device", "cpu", "--config", "tiny", "--sizes", "32", "--size-3d", "0", "--members", "1", "2",
        "--steps", "2", "6", "--samplers", "ddim", "dpm++", "--max-measured-steps", "3", "--reference-steps", "3",
        "--output", str(out),
    ])
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
        # a few batched steps with the condition encoded once beat 1000 sequential steps per member (margin for
        # timing noise on a busy machine: the expected ratio here is in the hundreds)
        assert r["speedup"] > 2
        assert r["speedup"] == pytest.approx(refs[r["members"]]["s_per_image"] / r["s_per_image"])
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
    result = bench.main([
        "--device", "cpu", "--config", "tiny", "--sizes", "--size-3d", "32", "--members", "2", "--steps", "2",
        "--samplers", "ddim", "--no-reference",
    ])
    rows = result["rows"]
    assert [(r["size"], r["members"], r["steps"]) for r in rows] == [("32^3", 2, 2)]
    assert rows[0]["peak_mib"] >= 0


def test_bench_training_rows(capsys: pytest.CaptureFixture) -> None:
    bench = _load("bench_training")
    result = bench.main([
        "--device", "cpu", "--models", "tiny", "unet-baseline", "--sizes", "32", "--batch-sizes", "1", "2",
        "--iterations", "2",
    ])
    rows = result["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("tiny", 1), ("tiny", 2), ("unet-baseline", 1), ("unet-baseline", 2)
    ]
    for r in rows:
        assert r["it_per_s"] > 0 and r["images_per_s"] == pytest.approx(r["it_per_s"] * r["batch"])
    assert "training iterations" in capsys.readouterr().out
