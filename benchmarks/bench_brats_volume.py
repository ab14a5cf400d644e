# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Seconds and peak memory per BraTS volume (240x240x155, 4 modalities) for the ``medsegdiff_brats`` bundle at its
default inference settings, and the member / window chunking that keeps a GPU of a given size within memory.

What it does, with the bundle's own ``inference.json`` (``preprocessing``, ``inferer``, ``post_transforms``; the
network has random weights, which does not change the cost):

1. one volume end to end: preprocessing (load, RAS, clip, brain crop, z-score), whole-volume sliding-window ensemble
   sampling (every window: condition encoded once, all members in one batch), post-processing (uncertainty maps,
   fusion, inversion to the input grid, BraTS label map): seconds per stage, number of windows, peak memory (CPU: peak
   resident set above the start; CUDA: ``max_memory_allocated``);
2. the memory probe: the device memory of one denoising call at the window size with 1 and with ``E`` members
   (CUDA: allocator peak as the inferer's ``member_batch_size="auto"`` probe measures it; CPU: peak RSS, the float32
   activations a GPU would hold too); bytes per member = the slope; from it the largest member chunk and window batch
   (``sw_batch_size``) that fit 80% of ``--gpu-gib`` GiB after the weights, the stitched whole-volume output and a
   CUDA context allowance, and the GPU command with those settings.

``--quick`` samples with 1 and 2 steps and extrapolates the sampling time linearly to the bundle's step count
(``extrapolated`` in the output); peak memory does not depend on the step count. Run::

    python benchmarks/bench_brats_volume.py --case ../shared/data/brats18/Brats18_2013_11_1   # a real case
    python benchmarks/bench_brats_volume.py                          # a synthetic 240x240x155 volume
    python benchmarks/bench_brats_volume.py --device cuda --gpu-gib 16
    python benchmarks/bench_brats_volume.py --case ... --configs inference.json,inference_2d.json   # 2D slice mode

In the 2D slice mode a "window" is one sampled axial slice (empty slices are skipped) and ``sw_batch_size`` counts
slices.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_utils import PeakMemory, machine_info, resolve_device, synchronize, write_json  # noqa: E402

from monai_diffseg.data import brats_datalist, make_synthetic_brats  # noqa: E402
from monai_diffseg.inferers import memory_aware_member_chunk  # noqa: E402

BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "medsegdiff_brats")
BRATS_SHAPE = (240, 240, 155)
CUDA_CONTEXT_GIB = 0.75  # CUDA context + cuDNN workspaces, not seen by the allocator
MIB = 2**20


def _config(
    overrides: dict[str, Any], device: torch.device, configs: tuple[str, ...] = ("inference.json",)
) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, "configs", c) for c in configs])
    parser["device"] = f"$torch.device('{device}')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _item(case: str | None, shape: tuple[int, ...], tmp: str) -> dict[str, Any]:
    if case is None:
        case = make_synthetic_brats(tmp, "brats2018", num_cases=1, shape=shape, seed=0)
    return {k: v for k, v in brats_datalist(case, labels=False)[0].items()}


def run_volume(parser: ConfigParser, item: dict, device: torch.device, steps: int | None = None) -> dict[str, Any]:
    """One volume through preprocessing, the sliding-window inferer and ``post_transforms``: seconds, windows, peak."""
    if steps is not None:
        parser["num_inference_steps"] = steps
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("post_transforms")
    network = parser.get_parsed_content("network_def").to(device).eval()
    windows = [0]
    encode = network.encode_condition

    def counted(image: torch.Tensor) -> Any:
        windows[0] += image.shape[0]  # windows (2D mode: sampled slices) encoded in this call
        return encode(image)

    network.encode_condition = counted  # type: ignore[method-assign]
    times: dict[str, float] = {}
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        data = pre(dict(item))
        batch = list_data_collate([data])
        times["preprocess_s"] = time.perf_counter() - start
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            pred = inferer(batch["image"].to(device), network)
        synchronize(device)
        times["sampling_s"] = time.perf_counter() - start
        start = time.perf_counter()
        out = post(decollate_batch({**batch, "pred": pred})[0])
        times["postprocess_s"] = time.perf_counter() - start
    return {
        **times,
        "windows": windows[0],
        "network_input": list(data["image"].shape[1:]),
        "label_map": list(out["pred"].shape),
        "peak_mib": peak.peak_mib,
    }


def probe_member_bytes(parser: ConfigParser, device: torch.device) -> dict[str, float]:
    """Device memory of one denoising call on a window with 1 and with ``E`` members; the slope per member."""
    network = parser.get_parsed_content("network_def").to(device).eval()
    roi = [int(s) for s in parser["roi_size"]]
    members = int(parser["num_samples"])
    image = torch.randn(1, int(parser["network_def"]["in_channels"]), *roi, device=device)
    with torch.no_grad():
        with PeakMemory(device) as cond_peak:
            condition = network.encode_condition(image)
        peaks = {}
        for e in sorted({1, members}):
            x = torch.randn(e, network.out_channels, *roi, device=device)
            tiled = tuple(c.repeat(e, *([1] * (c.ndim - 1))) for c in condition)
            t = torch.full((e,), 500, device=device, dtype=torch.long)
            with PeakMemory(device) as peak:
                network(x, t, condition=tiled)
            peaks[e] = peak.peak_mib * MIB
    per_member = (peaks[members] - peaks[1]) / (members - 1) if members > 1 else peaks[1]
    weights = sum(p.numel() * p.element_size() for p in network.parameters())
    return {
        "members": members,
        "call_1_member_mib": peaks[1] / MIB,
        f"call_{members}_members_mib": peaks[members] / MIB,
        "bytes_per_member_mib": per_member / MIB,
        "condition_mib": cond_peak.peak_mib,
        "weights_mib": weights / MIB,
    }


def gpu_plan(
    probe: dict[str, float], stitched_voxels: int, channels: int, gpu_gib: float, num_windows: int
) -> dict[str, Any]:
    """Member chunk and window batch (at most ``num_windows``) that fit 80% of what ``gpu_gib`` leaves after the
    fixed costs; a member costs the larger of the probe's slope and its 1-member call (conservative)."""
    members = int(probe["members"])
    stitched = 2 * stitched_voxels * members * channels * 4  # blended output + its weights' share, float32
    fixed = probe["weights_mib"] * MIB + probe["condition_mib"] * MIB + stitched + CUDA_CONTEXT_GIB * 2**30
    free = gpu_gib * 2**30 - fixed
    per_member = max(probe["bytes_per_member_mib"], probe["call_1_member_mib"]) * MIB
    chunk = memory_aware_member_chunk(members, per_member, free)
    windows = min(num_windows, max(1, int(0.8 * free // (members * per_member)))) if chunk == members else 1
    return {
        "gpu_gib": gpu_gib,
        "fixed_mib": fixed / MIB,
        "stitched_output_mib": stitched / MIB,
        "member_batch_size": chunk,
        "sw_batch_size": windows,
        "fits_all_members": chunk == members,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser_ = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser_.add_argument("--device", default="auto")
    parser_.add_argument("--case", default=None, help="a BraTS case folder (default: a synthetic 240x240x155 case)")
    parser_.add_argument("--shape", type=int, nargs=3, default=list(BRATS_SHAPE), help="synthetic volume size")
    parser_.add_argument("--quick", action="store_true", help="sample 1 and 2 steps, extrapolate to the bundle's")
    parser_.add_argument("--gpu-gib", type=float, default=16.0)
    parser_.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser_.add_argument("--override", action="append", default=[], help="KEY=JSON config override (repeatable)")
    parser_.add_argument("--output", default=None, help="write the results as JSON")
    parser_.add_argument(
        "--configs",
        default="inference.json",
        help="bundle configs merged in order, e.g. inference.json,inference_2d.json (the 2D slice mode)",
    )
    args = parser_.parse_args(argv)
    configs = tuple(args.configs.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    config = _config(overrides, device, configs)
    steps = int(config["num_inference_steps"])
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "settings": {
            k: config[k] for k in ("roi_size", "num_samples", "num_inference_steps", "overlap", "sw_batch_size")
        },
        "overrides": overrides,
        "configs": list(configs),
    }
    print(json.dumps(result["machine"]))
    with tempfile.TemporaryDirectory() as tmp:
        item = _item(args.case, tuple(args.shape), tmp)
        result["case"] = args.case or f"synthetic {tuple(args.shape)}"
        if args.quick:
            one = run_volume(_config(overrides, device, configs), item, device, steps=1)
            two = run_volume(_config(overrides, device, configs), item, device, steps=2)
            per_step = two["sampling_s"] - one["sampling_s"]
            volume = dict(two, sampling_s=one["sampling_s"] + (steps - 1) * per_step, extrapolated=True)
            volume["peak_mib"] = max(one["peak_mib"], two["peak_mib"])
        else:
            volume = run_volume(config, item, device)
    volume["total_s"] = volume["preprocess_s"] + volume["sampling_s"] + volume["postprocess_s"]
    result["volume"] = volume
    print(
        f"volume {result['case']}: network input {volume['network_input']} (brain crop), {volume['windows']} windows "
        f"of {config['roi_size']}, {config['num_samples']} members x {steps} DDIM steps: preprocess "
        f"{volume['preprocess_s']:.1f} s, sampling {volume['sampling_s']:.1f} s"
        f"{' (extrapolated from 1 and 2 steps)' if volume.get('extrapolated') else ''}, postprocess "
        f"{volume['postprocess_s']:.1f} s, total {volume['total_s']:.1f} s; peak memory {volume['peak_mib']:.0f} MiB "
        f"({device})"
    )
    probe = probe_member_bytes(_config(overrides, device, configs), device)
    result["probe"] = probe
    voxels = int(torch.tensor(volume["network_input"]).prod())
    plan = gpu_plan(probe, voxels, int(config["num_classes"]), args.gpu_gib, volume["windows"])
    result["gpu_plan"] = plan
    members = probe["members"]
    print(
        f"memory probe ({device}, window {config['roi_size']}): one denoising call {probe['call_1_member_mib']:.0f} MiB "
        f"with 1 member, {probe[f'call_{members}_members_mib']:.0f} MiB with {members}: "
        f"{probe['bytes_per_member_mib']:.0f} MiB per member; weights {probe['weights_mib']:.0f} MiB, condition "
        f"{probe['condition_mib']:.0f} MiB"
    )
    bundle = os.path.relpath(BUNDLE)
    files = ",".join(f"'{bundle}/configs/{c}'" for c in configs)
    command = (
        f'python -m monai.bundle run --config_file "[{files}]" --bundle_root {bundle} '
        f"--dataset_dir <BraTS folder> --member_batch_size {plan['member_batch_size']} "
        f"--sw_batch_size {plan['sw_batch_size']}"
    )
    plan["command"] = command
    print(
        f"{args.gpu_gib:g} GiB GPU: fixed {plan['fixed_mib']:.0f} MiB (weights, condition, stitched output "
        f"{plan['stitched_output_mib']:.0f} MiB, {CUDA_CONTEXT_GIB} GiB context) -> member_batch_size "
        f"{plan['member_batch_size']} of {probe['members']}, sw_batch_size {plan['sw_batch_size']}\n  {command}\n"
        f"  measure on the GPU itself: python benchmarks/bench_brats_volume.py --device cuda --gpu-gib {args.gpu_gib:g}"
    )
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
