# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Training speed and memory of MedSegDiff per batch size, with MONAI's UNet (the accuracy baseline) for scale.

One iteration = what the bundle's SupervisedTrainer does per batch: MaskDiffusionPrepareBatch (draw t and noise,
build x_t and the target) -> DiffusionSegmentationTrainInferer (network forward with the anchor head) ->
MaskDiffusionLoss (MSE + auxiliary DiceCE) -> backward -> AdamW step. Prints iterations and images per second and
the peak memory of the training step.

Run::

    python benchmarks/bench_training.py --quick            # about a minute on a 2-core CPU
    python benchmarks/bench_training.py --device cuda --sizes 256 --batch-sizes 8 16 32 --amp
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.networks.schedulers import DDPMScheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_utils import PeakMemory, machine_info, print_table, resolve_device, timed, write_json  # noqa: E402

from monai_diffseg.engines import MaskDiffusionLoss, MaskDiffusionPrepareBatch  # noqa: E402
from monai_diffseg.inferers import DiffusionSegmentationTrainInferer  # noqa: E402
from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS, MedSegDiff  # noqa: E402

BASELINE = "unet-baseline"


def make_step(model: str, device: torch.device, amp: bool) -> tuple[torch.nn.Module, Any]:
    """The network and a function ``step(batch)`` doing one full training iteration."""
    torch.manual_seed(0)
    autocast_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    if model == BASELINE:
        # the issue-6 accuracy baseline: MONAI UNet + DiceCE
        net = UNet(2, 3, 1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).to(device)
        loss_fn: Any = DiceCELoss(sigmoid=True)

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return loss_fn(net(batch["image"]), batch["label"])

    else:
        net = MedSegDiff(2, 3, 1, **MEDSEGDIFF_CONFIGS[model]).to(device)
        scheduler = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
        prepare = MaskDiffusionPrepareBatch(scheduler, 1, "sample")
        inferer = DiffusionSegmentationTrainInferer()
        diffusion_loss = MaskDiffusionLoss(aux_weight=0.5)

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs, targets, args, kwargs = prepare(batch, device)
            return diffusion_loss(inferer(inputs, net, *args, **kwargs), targets)

    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    net.train()

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=amp):
            loss = forward(batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return net, step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few iterations")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--models", nargs="+", default=["small", BASELINE], choices=[*MEDSEGDIFF_CONFIGS, BASELINE])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per row (after 2 warm-up)")
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 + GradScaler on CUDA, bf16 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.batch_sizes, args.iterations = [64, 128], [1, 4, 8], min(args.iterations, 5)
    device = resolve_device(args.device)
    info = machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))

    rows = []
    for model in args.models:
        for size in args.sizes:
            net, step = make_step(model, device, args.amp)
            params = sum(p.numel() for p in net.parameters()) / 1e6
            for batch_size in args.batch_sizes:
                gen = torch.Generator().manual_seed(0)
                batch = {
                    "image": torch.rand(batch_size, 3, size, size, generator=gen).to(device),
                    "label": (torch.rand(batch_size, 1, size, size, generator=gen) > 0.5).float().to(device),
                }
                for _ in range(2):
                    step(batch)  # warm-up: allocator, cuDNN autotune, optimizer state
                with PeakMemory(device) as mem:
                    seconds = timed(
                        lambda step=step, batch=batch: [step(batch) for _ in range(args.iterations)], device
                    )
                it_s = args.iterations / seconds
                rows.append(
                    {
                        "model": model,
                        "params_m": params,
                        "size": size,
                        "batch": batch_size,
                        "it_per_s": it_s,
                        "images_per_s": it_s * batch_size,
                        "peak_mib": mem.peak_mib,
                    }
                )
                print(
                    f"  {model} {size}x{size} batch {batch_size}: {it_s:.2f} it/s, peak {mem.peak_mib:.0f} MiB",
                    flush=True,
                )

    print_table(
        rows,
        [
            ("model", "model", ""),
            ("params_m", "params (M)", ".2f"),
            ("size", "size", "d"),
            ("batch", "batch", "d"),
            ("it_per_s", "it/s", ".2f"),
            ("images_per_s", "images/s", ".1f"),
            ("peak_mib", "peak MiB", ".0f"),
        ],
        title=f"training iterations ({'amp' if args.amp else 'fp32'}, {args.iterations} timed iterations per row)",
    )
    result = {"machine": info, "args": vars(args), "rows": rows}
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
