# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/bench_brats_volume.py runs end to end on a small synthetic volume and a tiny network; its GPU plan
follows from the probe by the documented rule."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = [
    "roi_size=[16,16,16]",
    "network_def#channels=[8,16]",
    "network_def#cond_channels=[8,16]",
    "network_def#norm_num_groups=4",
    "num_samples=3",
]


def test_bench_brats_volume_tiny(tmp_path: Path) -> None:
    bench = SimpleNamespace(**runpy.run_path(str(BENCH / "bench_brats_volume.py")))
    out = tmp_path / "brats.json"
    args = ["--device", "cpu", "--shape", "40", "36", "20", "--quick", "--output", str(out)]
    result = bench.main(args + [a for o in TINY for a in ("--override", o)])
    assert json.loads(out.read_text())["volume"]["windows"] == result["volume"]["windows"]
    volume = result["volume"]
    assert volume["extrapolated"] and volume["label_map"] == [40, 36, 20]  # back in the input grid
    # brain crop, then 16^3 windows overlapping by 25% (stride 12): one window count per axis
    grid = [max(1, -(-(s - 16) // 12) + 1) for s in volume["network_input"]]
    assert volume["windows"] == grid[0] * grid[1] * grid[2]
    assert result["settings"]["num_samples"] == 3 and result["probe"]["members"] == 3


def test_gpu_plan_rule() -> None:
    bench = SimpleNamespace(**runpy.run_path(str(BENCH / "bench_brats_volume.py")))
    mib = 2**20
    probe = {"members": 5, "call_1_member_mib": 900.0, "bytes_per_member_mib": 1000.0, "weights_mib": 40.0,
             "condition_mib": 60.0}  # fmt: skip
    # 16 GiB: fixed = 40 + 60 MiB + stitched (2 x 1e6 voxels x 5 x 3 x 4 B) + 0.75 GiB; 80% of the rest / 1000 MiB
    plan = bench.gpu_plan(probe, 1_000_000, 3, 16.0, num_windows=12)
    fixed = (40 + 60) * mib + 2 * 1_000_000 * 5 * 3 * 4 + 0.75 * 2**30
    assert plan["fixed_mib"] * mib == fixed
    assert plan["member_batch_size"] == 5 and plan["sw_batch_size"] == int(0.8 * (16 * 2**30 - fixed) // (5000 * mib))
    small = bench.gpu_plan(probe, 1_000_000, 3, 4.0, num_windows=12)  # ~3 GiB left: 2 members per call, 1 window
    assert (small["member_batch_size"], small["sw_batch_size"], small["fits_all_members"]) == (2, 1, False)


def test_bench_brats_volume_2d_slice_mode(tmp_path: Path) -> None:
    """--configs inference.json,inference_2d.json: the 2D slice mode; a "window" is a sampled (non-empty) slice."""
    import nibabel as nib
    import numpy as np

    from monai_diffseg.data import brats_datalist, make_synthetic_brats

    bench = SimpleNamespace(**runpy.run_path(str(BENCH / "bench_brats_volume.py")))
    shape = ["40", "36", "20"]
    tiny = [o for o in TINY if not o.startswith("roi_size")] + ["roi_size=[48,48]"]
    args = ["--device", "cpu", "--shape", *shape, "--quick", "--configs", "inference.json,inference_2d.json"]
    result = bench.main(args + [a for o in tiny for a in ("--override", o)])
    volume = result["volume"]
    assert volume["label_map"] == [40, 36, 20] and result["configs"] == ["inference.json", "inference_2d.json"]
    # the same synthetic case (seed 0): one sampled slice per axial slice that holds brain
    case = make_synthetic_brats(tmp_path, "brats2018", num_cases=1, shape=(40, 36, 20), seed=0)
    t1 = np.asarray(nib.load(brats_datalist(case, labels=False)[0]["image"][0]).dataobj)
    assert volume["windows"] == int((t1 != 0).any(axis=(0, 1)).sum()) < volume["network_input"][2]
    assert "inference_2d.json" in result["gpu_plan"]["command"]
