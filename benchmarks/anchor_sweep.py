# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Sampler sweep on one trained MedSegDiff checkpoint (issue 16): the anchor head alone against ensembles drawn with
other starts (``init="noise"`` / ``"anchor"`` + ``t_start``), steps, members and anchor prior, all scored **per case on
the same footing** in one process: the bundle's preprocessing (``inference.json``), the network loaded once, every
mask at the network resolution against the nearest-resized label (``label_net``), binarised at 0.5, MONAI Dice with
``ignore_empty=False``; fusion by the bundle's ``EnsembleFusiond`` (``mean`` and ``torch_crf``, guided by the image).
The anchor head is scored the same way (as is, and after the same CRF), so "fused vs anchor" is paired per case
(Wilcoxon). It is a screening tool: the full evaluation (original image size, HD95, ECE, written files) is
``benchmarks/quality.py --checkpoint ... --init ... --t-start ...``.

Each ``--config`` is ``NAME:key=value,...`` with keys ``init``, ``t_start``, ``steps``, ``members``,
``anchor_weight``, ``seed``; network evaluations per member (NFE) are counted from the scheduler's grid.

Run (from the repository root)::

    python benchmarks/anchor_sweep.py --data ../shared/data/kvasir_seg --mask-threshold 127 \\
        --checkpoint runs/quality/kvasir/medsegdiff/models/model.pt --max-test 100 \\
        --config noise20:steps=20 --config a473:init=anchor,t_start=473,steps=20 --output runs/sweep_kvasir.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.utils import convert_to_tensor
from scipy.stats import spearmanr, wilcoxon

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_utils import machine_info, write_json  # noqa: E402

from monai_diffseg.data import image_folder_datalist, split_datalist  # noqa: E402
from monai_diffseg.inferers import DiffusionSegmentationInferer  # noqa: E402
from monai_diffseg.transforms import EnsembleFusiond  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"init": str, "t_start": int, "steps": int, "members": int, "anchor_weight": float, "seed": int}

__all__ = ["main", "parse_config"]


def parse_config(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,...`` -> ``(NAME, {key: value})`` (keys and types: :data:`KEYS`)."""
    name, _, body = spec.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ValueError(f"--config '{spec}': '{item}' must be key=value with key in {list(KEYS)}.")
        opts[key] = KEYS[key](value)
    return name, opts


def _nfe(inferer: DiffusionSegmentationInferer) -> int:
    scheduler = copy.deepcopy(inferer.scheduler)
    scheduler.set_timesteps(inferer.num_inference_steps)
    return max(1, sum(1 for t in scheduler.timesteps.tolist() if inferer.init != "anchor" or t <= inferer.t_start))


def _dice(prob: torch.Tensor, label: torch.Tensor) -> list[float]:
    """Per-case Dice of ``prob >= 0.5`` ``(N, 1, *S)`` against ``label`` ``(N, 1, *S)``."""
    return compute_dice((prob >= 0.5).float(), label, ignore_empty=False)[:, 0].tolist()


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    diff = np.asarray(a) - np.asarray(b)
    return {
        "better": int((diff > 0).sum()),
        "worse": int((diff < 0).sum()),
        "mean_difference": float(diff.mean()),
        "wilcoxon_p": float(wilcoxon(diff).pvalue) if np.any(diff != 0) else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="images/ + masks/ folder (as benchmarks/quality.py)")
    p.add_argument("--mask-threshold", type=float, default=None, help="mask > threshold (Kvasir-SEG JPEG masks: 127)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2))
    p.add_argument("--max-test", type=int, default=None, help="the first cases of the test split only")
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "medsegdiff_isic2018"))
    p.add_argument("--checkpoint", required=True, help="MedSegDiff state dict (the bundle's model.pt)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8, help="images per sampler call")
    p.add_argument("--config", action="append", required=True, metavar="NAME:key=value,...")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = [parse_config(c) for c in args.config]

    data = Path(args.data)
    datalist = image_folder_datalist(data / "images", data / "masks")
    test = split_datalist(datalist, tuple(args.fractions), seed=args.split_seed)[2][: args.max_test]
    parser = ConfigParser()
    parser.read_config(str(Path(args.bundle) / "configs" / "inference.json"))
    parser["image_size"] = [args.image_size, args.image_size]
    parser["device"] = "$torch.device('cpu')"
    if args.mask_threshold is not None:
        for i, t in enumerate(parser["preprocessing"]["transforms"][1]["transforms"]):
            if t["_target_"].endswith("BinaryMaskd"):
                parser[f"preprocessing#transforms#1#transforms#{i}#threshold"] = args.mask_threshold
    preprocessing = parser.get_parsed_content("preprocessing")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    network.eval()
    sampler = parser.get_parsed_content("sampler")
    fusions = {m: EnsembleFusiond(keys="pred", method=m, guide_key="image") for m in ("mean", "torch_crf")}

    items = [preprocessing(dict(d)) for d in test]
    images = torch.stack([convert_to_tensor(d["image"], track_meta=False).float() for d in items])
    labels = torch.stack([convert_to_tensor(d["label_net"], track_meta=False).float() for d in items])
    print(f"{len(items)} test cases (split seed {args.split_seed}), checkpoint {args.checkpoint}", flush=True)

    def fuse(samples: torch.Tensor, method: str) -> torch.Tensor:  # (N, E, 1, *S) -> (N, 1, *S)
        return torch.stack([fusions[method]({"pred": s, "image": im})["pred"] for s, im in zip(samples, images)])

    report: dict[str, Any] = {
        "command": "python benchmarks/anchor_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": ", ".join(f"{k}={v}" for k, v in machine_info(torch.device("cpu")).items()),
        "test_cases": [d["case"] for d in test],
        "configs": {},
    }
    with torch.no_grad():
        anchor_prob = torch.cat(
            [
                torch.sigmoid(network.anchor(network.encode_condition(images[i : i + 16])))
                for i in range(0, len(items), 16)
            ]
        )
    anchor = {"mean": _dice(anchor_prob, labels), "torch_crf": _dice(fuse(anchor_prob[:, None], "torch_crf"), labels)}
    report["anchor"] = {m: {"dice": float(np.mean(v)), "cases": v} for m, v in anchor.items()}
    print(f"anchor head: Dice {np.mean(anchor['mean']):.4f} (after CRF {np.mean(anchor['torch_crf']):.4f})")
    for name, opts in configs:
        inferer = DiffusionSegmentationInferer(
            sampler,
            num_inference_steps=opts.get("steps", 20),
            num_samples=opts.get("members", 5),
            seed=opts.get("seed", 0),
            return_samples=True,
            init=opts.get("init", "noise"),
            t_start=opts.get("t_start"),
            anchor_weight=opts.get("anchor_weight", 0.0),
        )
        start = time.perf_counter()
        samples = torch.cat(
            [inferer(images[i : i + args.batch_size], network) for i in range(0, len(items), args.batch_size)]
        )
        wall = time.perf_counter() - start
        hard = (samples >= 0.5).float()
        inter = (hard[:, :, None] * hard[:, None]).flatten(3).sum(-1)
        union = ((hard[:, :, None] + hard[:, None]) > 0).float().flatten(3).sum(-1)
        pair_iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))  # (N, E, E)
        e = samples.shape[1]
        diversity = ((1 - pair_iou).sum((1, 2)) / max(1, e * (e - 1))).tolist()
        entry: dict[str, Any] = {"options": opts, "nfe": _nfe(inferer), "sample_s_per_case": wall / len(items)}
        for method in ("mean", "torch_crf"):
            fused = fuse(samples, method)
            dice = _dice(fused, labels)
            ent = torch.special.entr(fused) + torch.special.entr(1 - fused)
            entropy_fg = (ent.flatten(1).sum(1) / (fused >= 0.5).flatten(1).sum(1).clamp_min(1)).tolist()
            err = 1 - np.asarray(dice)
            entry[method] = {
                "dice": float(np.mean(dice)),
                "vs_anchor": _paired(dice, anchor[method]),
                "vs_anchor_without_crf": _paired(dice, anchor["mean"]),
                "spearman_entropy_fg": float(spearmanr(entropy_fg, err).statistic),
                "spearman_diversity": float(spearmanr(diversity, err).statistic) if e > 1 else None,
                "cases": dice,
            }
        report["configs"][name] = entry
        m, c = entry["mean"], entry["torch_crf"]
        print(
            f"{name:<14} NFE {entry['nfe']:>2} x E {e:>2}: Dice mean-fusion {m['dice']:.4f} "
            f"(vs anchor {m['vs_anchor']['better']}/{len(items)}, p={m['vs_anchor']['wilcoxon_p']:.3g}) | CRF "
            f"{c['dice']:.4f} (vs anchor+CRF {c['vs_anchor']['better']}/{len(items)}, "
            f"p={c['vs_anchor']['wilcoxon_p']:.3g}; vs anchor {c['vs_anchor_without_crf']['better']}, "
            f"p={c['vs_anchor_without_crf']['wilcoxon_p']:.3g}) | Spearman fg {c['spearman_entropy_fg']:.2f} "
            f"div {m['spearman_diversity'] if m['spearman_diversity'] is None else round(m['spearman_diversity'], 2)}"
            f" | {entry['sample_s_per_case']:.2f} s/case",
            flush=True,
        )
        if args.output:
            write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
