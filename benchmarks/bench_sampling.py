# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Sampling speed and memory of MedSegDiff ensembles, side by side with the reference implementation's cost.

Prints, for the chosen network configuration (default: the ISIC 2018 bundle's, ``small``):

1. a size table of all configurations: parameters (condition branch, denoiser), GFLOPs of the condition branch
   (once per image) and of the denoiser (per step and member), counted with ``torch.utils.flop_counter``;
2. the sampling table: seconds per image, images per second and peak memory for every image size, ensemble
   size, number of steps and sampler (DDPM / DDIM / DPM-Solver++), with our inferer (condition encoded once, all
   members in one batch);
3. the **reference-cost row**: the same network run the way the public MedSegDiff code runs it (1000-step DDPM,
   batch 1, ensemble members one after another, the condition branch recomputed at every step), and the speed-up
   of every row over it at the same image and ensemble size; the smallest speed-up is printed and recorded
   (``min_speedup``, and ``speedup_as_expected``: above ``MIN_EXPECTED_SPEEDUP``);
4. with ``--bundle-default``: the bundle's own sampler as ``inference.json`` sets it (sampler, steps, members and
   the start: ``sampler_init``/``t_start``, i.e. anchor-initialised sampling with fewer network evaluations), measured
   in full at every 2D size beside the reference row, with its network evaluations per member (``nfe``).

The cost of a sampling run is ``encode + steps x step``; rows with more steps than ``--max-measured-steps`` (and
the reference row beyond ``--reference-steps``) are extrapolated from a measured run with that many steps and are
flagged ``extrapolated`` (``*`` in the table). Without limits (the default outside ``--quick``) every row is
measured in full.

Run::

    python benchmarks/bench_sampling.py --quick            # a few minutes on a 2-core CPU
    python benchmarks/bench_sampling.py --device cuda      # everything measured, on the GPU
    python benchmarks/bench_sampling.py --device cuda --autocast bf16 --channels-last --compile
    # the issue-16 check: the bundle default at 256x256, E = 5, beside the reference-cost row, one CPU run
    python benchmarks/bench_sampling.py --device cpu --threads 1 --sizes 256 --size-3d 0 --members 5 --steps 10 \
        --samplers ddim --reference-steps 20 --bundle-default
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_utils import PeakMemory, machine_info, print_table, resolve_device, timed, write_json  # noqa: E402

from monai_diffseg.inferers import DiffusionSegmentationInferer  # noqa: E402
from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS, MedSegDiff  # noqa: E402
from monai_diffseg.schedulers import DPMSolverMultistepScheduler  # noqa: E402

BUNDLE_INFERENCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "bundles",
    "medsegdiff_isic2018",
    "configs",
    "inference.json",
)
SAMPLERS = ("ddpm", "ddim", "dpm++")
# a few batched steps with the condition encoded once must beat 1000 sequential steps per member by far more than
# this (hundreds of times on a CPU); a row below it is reported as unexpected
MIN_EXPECTED_SPEEDUP = 2.0
SCHEDULE = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "prediction_type": "sample"}


def make_sampler(name: str) -> Any:
    if name == "ddpm":
        return DDPMScheduler(**SCHEDULE)
    if name == "ddim":
        return DDIMScheduler(**SCHEDULE)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**SCHEDULE, solver_order=2)
    raise ValueError(f"Unknown sampler '{name}', expected one of {SAMPLERS}.")


def bundle_default_sampler() -> tuple[str, int, int]:
    """(sampler, steps, members) the ISIC 2018 bundle's inference.json uses by default."""
    with open(BUNDLE_INFERENCE) as f:
        cfg = json.load(f)
    target = cfg["sampler"]["_target_"]
    name = "dpm++" if "DPMSolver" in target else "ddim" if "DDIM" in target else "ddpm"
    return name, int(cfg["num_inference_steps"]), int(cfg["num_samples"])


def bundle_default_options() -> dict[str, Any]:
    """The ISIC 2018 bundle's sampler start options (``DiffusionSegmentationInferer`` ``init``, ``t_start``,
    ``anchor_weight``) from its inference.json; the full reverse process from noise where it sets none."""
    with open(BUNDLE_INFERENCE) as f:
        cfg = json.load(f)
    return {
        "init": cfg.get("sampler_init", "noise"),
        "t_start": cfg.get("t_start"),
        "anchor_weight": float(cfg.get("anchor_weight", 0.0)),
    }


def network_evaluations(sampler: str, steps: int, options: dict[str, Any]) -> int:
    """Network evaluations per member of ``sampler`` with ``steps`` and the start ``options``."""
    scheduler = make_sampler(sampler)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    return max(1, sum(1 for t in timesteps if options.get("init", "noise") != "anchor" or t <= options["t_start"]))


def make_network(config: str, spatial_dims: int, in_channels: int, device: torch.device) -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(spatial_dims, in_channels, 1, **MEDSEGDIFF_CONFIGS[config]).to(device).eval()


def size_table(size: int) -> list[dict[str, Any]]:
    """Parameters and GFLOPs (condition once, denoiser per step and member) of every configuration, 2D RGB."""
    rows = []
    for name in MEDSEGDIFF_CONFIGS:
        net = make_network(name, 2, 3, torch.device("cpu"))
        image, x = torch.zeros(1, 3, size, size), torch.zeros(1, 1, size, size)
        t = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            with FlopCounterMode(display=False) as enc_flops:
                cond = net.encode_condition(image)
            with FlopCounterMode(display=False) as step_flops:
                net(x, t, condition=cond)
        enc_params = sum(p.numel() for p in net.condition_encoder.parameters())
        total = sum(p.numel() for p in net.parameters())
        rows.append(
            {
                "config": name,
                "params_m": total / 1e6,
                "cond_params_m": enc_params / 1e6,
                "denoiser_params_m": (total - enc_params) / 1e6,
                "cond_gflops": enc_flops.get_total_flops() / 1e9,
                "step_gflops": step_flops.get_total_flops() / 1e9,
            }
        )
    return rows


def sampling_row(
    label: str,
    sampler: str,
    members: int,
    steps: int,
    *,
    seconds: float,
    measured_s: float,
    peak: float,
    batch: int,
    ref_step_s: float,
    extrapolated: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """
    A row of the sampling table for a call on ``batch`` images: ``seconds`` the call's (measured or extrapolated)
    time, ``measured_s`` the measured run's; the speed-up is over the reference cost of the same ensemble
    (``ref_step_s`` per step, 1000 steps per member); ``extra``: the row's own fields, after ``steps``.
    """
    s_per_image = seconds / batch
    return {
        "size": label,
        "sampler": sampler,
        "members": members,
        "steps": steps,
        **extra,
        "s_per_image": s_per_image,
        "images_per_s": 1.0 / s_per_image,
        "peak_mib": peak,
        "extrapolated": extrapolated,
        "measured_s": measured_s,
        "speedup": ref_step_s * 1000 * members / s_per_image,
    }


def measure_ours(
    net: MedSegDiff, image: torch.Tensor, sampler: str, members: int, steps: int, opts: dict[str, Any]
) -> tuple[float, float]:
    """(seconds, peak MiB) of one sampling call of ``image`` (batch of N images)."""
    inferer = DiffusionSegmentationInferer(make_sampler(sampler), steps, num_samples=members, seed=0, **opts)
    with PeakMemory(image.device) as mem:
        seconds = timed(lambda: inferer(image, net), image.device)
    return seconds, mem.peak_mib


def measure_encode(net: MedSegDiff, image: torch.Tensor, repeats: int = 3) -> float:
    with torch.no_grad():
        net.encode_condition(image)  # warm-up
        return min(timed(lambda: net.encode_condition(image), image.device) for _ in range(repeats))


def reference_cost(net: MedSegDiff, image: torch.Tensor, steps: int) -> tuple[float, float]:
    """
    Seconds per step and peak MiB of the reference sampling loop for one member of one image: 1000-step DDPM,
    batch 1, condition branch recomputed at every step. Only the first ``steps`` steps are run.
    """
    scheduler = DDPMScheduler(**SCHEDULE)
    scheduler.set_timesteps(1000, device=image.device)
    img = image[:1]
    x = torch.randn(1, 1, *img.shape[2:], device=image.device)

    def run() -> None:
        nonlocal x
        with torch.no_grad():
            for t in scheduler.timesteps[:steps]:
                tt = torch.full((1,), int(t), device=image.device, dtype=torch.long)
                out = net(x, tt, image=img)  # the network re-encodes the image: what the reference code does
                x = scheduler.step(out, int(t), x)[0]

    with PeakMemory(image.device) as mem:
        seconds = timed(run, image.device)
    return seconds / steps, mem.peak_mib


def bench_size(
    args: argparse.Namespace,
    device: torch.device,
    spatial_dims: int,
    size: int,
    members_list: list[int],
    samplers: list[str],
    steps_list: list[int],
) -> list[dict[str, Any]]:
    in_channels = 3 if spatial_dims == 2 else args.in_channels_3d
    net = make_network(args.config, spatial_dims, in_channels, device)
    opts: dict[str, Any] = {"autocast": args.autocast, "channels_last": args.channels_last, "compile": args.compile}
    if args.cuda_graphs:
        opts["cuda_graphs"] = True
    label = f"{size}^{spatial_dims}" if spatial_dims == 3 else f"{size}x{size}"
    image = torch.randn(args.batch, in_channels, *([size] * spatial_dims), device=device)
    encode_s = measure_encode(net, image)

    ref_steps = min(1000, args.reference_steps or 1000)
    ref_step_s, ref_mem = reference_cost(net, image, ref_steps) if not args.no_reference else (float("nan"), 0.0)
    rows: list[dict[str, Any]] = []
    row_of = functools.partial(sampling_row, label, batch=args.batch, ref_step_s=ref_step_s)  # the rows of ours
    if not args.no_reference:
        # all members of all images one after another: members x 1000 steps per image
        for members in members_list:
            rows.append(
                {
                    "size": label,
                    "sampler": "reference",
                    "members": members,
                    "steps": 1000,
                    "s_per_image": ref_step_s * 1000 * members,
                    "peak_mib": ref_mem,
                    "extrapolated": ref_steps < 1000 or members > 1,
                    "speedup": 1.0,
                }
            )

    for members in members_list:
        measure_ours(net, image, samplers[0], members, 2, opts)  # warm-up (and compile) for this batch shape
        for sampler in samplers:
            measured: dict[int, tuple[float, float]] = {}
            for steps in steps_list:
                run_steps = steps if args.max_measured_steps is None else min(steps, args.max_measured_steps)
                if run_steps not in measured:
                    measured[run_steps] = measure_ours(net, image, sampler, members, run_steps, opts)
                measured_s, peak = measured[run_steps]
                seconds = measured_s
                if run_steps != steps:  # encode once + linear in steps
                    # timing noise can make the separately measured encode look dearer than the whole short run;
                    # then charge the whole run per step (overestimates ours, never flatters it)
                    fixed = encode_s if measured_s > encode_s else 0.0
                    seconds = fixed + (measured_s - fixed) * steps / run_steps
                row = row_of(
                    sampler,
                    members,
                    steps,
                    seconds=seconds,
                    measured_s=measured_s,
                    peak=peak,
                    extrapolated=run_steps != steps,
                    measured_steps=run_steps,
                    encode_s=encode_s,
                )
                rows.append(row)
                print(
                    f"  {label} {sampler:>6} E={members:<3} steps={steps:<5} {row['s_per_image']:9.3f} s/image"
                    f"{' *' if row['extrapolated'] else ''}  peak {peak:8.1f} MiB  x{row['speedup']:.0f}",
                    flush=True,
                )
    if getattr(args, "bundle_default", False) and spatial_dims == 2:
        # the bundle's own sampler (its start options included), measured in full
        name, steps, members = bundle_default_sampler()
        options = bundle_default_options()
        measure_ours(net, image, name, members, 2, {**opts, "init": "noise"})  # warm-up for this batch shape
        seconds, peak = measure_ours(net, image, name, members, steps, {**opts, **options})
        nfe = network_evaluations(name, steps, options)
        row = row_of(
            "bundle default", members, steps, seconds=seconds, measured_s=seconds, peak=peak, nfe=nfe, **options
        )
        rows.append(row)
        print(
            f"  {label} bundle default ({name} {steps} steps, init={options['init']}, t_start={options['t_start']}: "
            f"{nfe} network evaluations per member) E={members}: {row['s_per_image']:.3f} s/image  peak {peak:.1f} MiB"
            f"  x{row['speedup']:.0f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few-minute CPU run: short measured runs, extrapolated")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--config", default="small", choices=sorted(MEDSEGDIFF_CONFIGS))
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256], help="2D image sizes")
    parser.add_argument("--size-3d", type=int, default=96, help="3D volume edge (0: no 3D rows)")
    parser.add_argument("--in-channels-3d", type=int, default=1)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 1000])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--batch", type=int, default=1, help="images per sampling call")
    parser.add_argument("--max-measured-steps", type=int, default=None)
    parser.add_argument("--reference-steps", type=int, default=None, help="measured steps of the reference row")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--autocast", default=None, choices=["bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--bundle-default",
        action="store_true",
        help="also measure the ISIC 2018 bundle's own sampler (inference.json: steps, members, sampler_init, t_start) "
        "in full at every 2D size",
    )
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.quick:
        args.max_measured_steps = args.max_measured_steps or 10
        args.reference_steps = args.reference_steps or 10
    members_3d = [m for m in args.members if m <= 5] or args.members[:1]
    samplers_3d = args.samplers if not args.quick else [bundle_default_sampler()[0]]

    info = machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    default = bundle_default_sampler()
    print(f"bundle default sampler: {default[0]}, {default[1]} steps, {default[2]} members")

    sizes = size_table(256)
    print_table(
        sizes,
        [
            ("config", "config", ""),
            ("params_m", "params (M)", ".2f"),
            ("cond_params_m", "condition (M)", ".2f"),
            ("denoiser_params_m", "denoiser (M)", ".2f"),
            ("cond_gflops", "condition GFLOPs/image", ".2f"),
            ("step_gflops", "denoiser GFLOPs/step/member", ".2f"),
        ],
        title="network configurations, 2D 3->1 channels at 256x256 (FLOPs = 2 x multiply-adds)",
    )

    rows: list[dict[str, Any]] = []
    print(f"\nsampling, config '{args.config}', {args.batch} image(s) per call ('*' = extrapolated)")
    for size in args.sizes:
        rows += bench_size(args, device, 2, size, args.members, args.samplers, args.steps)
    if args.size_3d:
        rows += bench_size(args, device, 3, args.size_3d, members_3d, samplers_3d, args.steps)

    table = [dict(r, flag="*" if r["extrapolated"] else "") for r in rows]
    print_table(
        table,
        [
            ("size", "size", ""),
            ("sampler", "sampler", ""),
            ("members", "E", "d"),
            ("steps", "steps", "d"),
            ("s_per_image", "s/image", ".3f"),
            ("flag", "", ""),
            ("images_per_s", "images/s", ".3g"),
            ("peak_mib", "peak MiB", ".0f"),
            ("speedup", "speed-up vs ref", ".0f"),
        ],
        title="sampling results",
    )

    summary = []
    explicit = any(r["sampler"] == "bundle default" for r in rows)
    for r in rows:
        match = r["sampler"] == "bundle default" if explicit else (r["sampler"], r["steps"], r["members"]) == default
        if match and r["size"] == "256x256":
            summary.append(r)
            print(
                f"\nbundle default ({default[0]} {default[1]} steps, E={default[2]}, "
                f"{r.get('nfe', r['steps'])} network evaluations per member) at 256x256: "
                f"{r['s_per_image']:.3f} s/image, {r['speedup']:.0f}x faster than the reference-cost row"
            )
    result = {
        "machine": info,
        "args": vars(args),
        "bundle_default": default,
        "sizes": sizes,
        "rows": rows,
        "default_at_256": summary,
    }
    ours = [r for r in rows if r["sampler"] != "reference"]
    if ours and not args.no_reference:
        slowest = min(ours, key=lambda r: r["speedup"])
        result["min_speedup"] = slowest["speedup"]
        result["speedup_as_expected"] = bool(slowest["speedup"] > MIN_EXPECTED_SPEEDUP)
        verdict = (
            "as expected"
            if result["speedup_as_expected"]
            else (
                f"UNEXPECTED: not > {MIN_EXPECTED_SPEEDUP:g}x (a busy machine, or a regression of the batched sampler)"
            )
        )
        print(
            f"\nslowest row vs the reference cost: x{slowest['speedup']:.1f} ({slowest['size']} {slowest['sampler']} "
            f"E={slowest['members']} steps={slowest['steps']}): {verdict}"
        )
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
