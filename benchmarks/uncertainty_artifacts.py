# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Artefacts in the ensemble uncertainty maps of a trained MedSegDiff: background level and lattice energy.

A good uncertainty map is smooth and near zero where the ensemble members agree (the skin far from the lesion);
a grid-locked pattern there (a lattice, rectangular boxes) is an artefact of the network, not of the image. This
script samples the bundle's ensemble for the test cases of a seeded image/mask split (the same split as
``benchmarks/quality.py``) with the bundle's ``inference.json`` (preprocessing, DDIM sampler, steps, members) and
measures, at the network resolution:

- ``bg_entropy`` / ``bg_variance`` / ``bg_mi``: mean predictive entropy, member variance and mutual information
  over the *far background*: pixels more than ``--margin`` (fraction of the image side) away from both the
  annotated and the predicted lesion;
- ``bg_entropy_p99``: their 99th percentile (bright spots in the background);
- ``lattice_ratio``: how much of the (mean-removed) power spectrum of the entropy map sits on the frequency grid of
  a period-``P`` lattice (``P`` = the network's total stride, :attr:`MedSegDiff.size_divisor`), relative to the
  neighbouring frequencies: power at ``(a H / P, b W / P)`` for every ``(a, b) != (0, 0)``, divided by the mean
  power of the 8 neighbours of each such frequency. About 1 for a map without a lattice; a lattice makes it large;
- ``lattice_fraction``: the share of the non-DC spectral power that sits on those lattice frequencies;
- ``block_edge_ratio`` (of the entropy map) and ``block_edge_ratio_prob`` (of the mean probability): the mean
  absolute step between neighbouring pixels across the lines of the period-``P`` grid over the mean step elsewhere.
  About 1 (below 1 for smooth maps) without blocks; flat ``P``-pixel boxes with sharp edges make it large.

It also writes, with ``--png-dir``: per case a montage (image | mean probability | entropy as the bundle saves it
| entropy, variance and mutual information contrast-stretched to their 99.5th percentile), and the log power
spectrum of the entropy maps averaged over the cases.

Run (from the repository root)::

    python benchmarks/uncertainty_artifacts.py --data ../shared/data/ph2 \
        --checkpoint runs/quality/ph2/medsegdiff/models/model.pt --image-size 128 \
        --png-dir runs/artifacts/png --output runs/artifacts/report.json

``--network JSON`` overrides ``MedSegDiff`` arguments of the bundle's ``network_def`` (e.g. to load a checkpoint
trained with other options).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "bundles" / "medsegdiff_isic2018"

__all__ = ["background_mask", "block_edge_ratio", "lattice_scores", "main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (paired by file stem)")
    p.add_argument("--checkpoint", required=True, help="MedSegDiff weights (state dict or {'model': state dict})")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--image-size", type=int, nargs="+", default=[128])
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2))
    p.add_argument("--max-test", type=int, default=None, help="at most this many test cases (first of the split)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the bundle's)")
    p.add_argument("--members", type=int, default=None, help="ensemble size (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--network", default=None, help="JSON dict of MedSegDiff arguments over the bundle's network_def")
    p.add_argument("--margin", type=float, default=0.1, help="far background: this fraction of the image side "
                   "away from the annotated and the predicted lesion")
    p.add_argument("--png-dir", default=None, help="write montages and the mean spectrum here")
    p.add_argument("--png-cases", type=int, default=6, help="montages for the first N cases")
    p.add_argument("--output", default=None, help="JSON report")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if len(args.image_size) == 1:
        args.image_size = [args.image_size[0]] * 2
    return args


# ---------------------------------------------------------------------------------------------------------- metrics
def background_mask(label: torch.Tensor, pred: torch.Tensor, margin: float) -> torch.Tensor:
    """
    Pixels farther than ``margin * max(H, W)`` from the annotated and from the predicted lesion.

    Args:
        label: ``(H, W)`` binary annotation; pred: ``(H, W)`` binary prediction.
        margin: distance as a fraction of the longer image side.

    Returns:
        ``(H, W)`` bool.
    """
    radius = max(1, int(round(margin * max(label.shape))))
    lesion = ((label > 0.5) | (pred > 0.5)).float()[None, None]
    grown = F.max_pool2d(lesion, kernel_size=2 * radius + 1, stride=1, padding=radius)[0, 0]
    return grown < 0.5


def lattice_scores(maps: torch.Tensor, period: int) -> dict[str, float]:
    """
    Spectral lattice measures of ``maps`` ``(K, H, W)`` for a lattice of period ``period`` pixels.

    Returns:
        ``lattice_ratio``: mean over the lattice frequencies ``(a H / P, b W / P) != (0, 0)`` of the power there
        divided by the mean power of its 8 neighbours (the power spectrum averaged over the ``K`` maps first);
        ``lattice_fraction``: power on the lattice frequencies / all non-DC power.
    """
    maps = maps.double()
    maps = maps - maps.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(maps).abs().square().mean(0)  # (H, W)
    h, w = power.shape
    if h % period or w % period:
        raise ValueError(f"lattice_scores: map size {(h, w)} must be divisible by the period {period}.")
    sh, sw = h // period, w // period
    on = torch.zeros(h, w, dtype=torch.bool)
    on[::sh, ::sw] = True
    on[0, 0] = False
    ratios = []
    for i, j in on.nonzero().tolist():
        neigh = [power[(i + di) % h, (j + dj) % w] for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
        ratios.append(float(power[i, j] / (torch.stack(neigh).mean() + 1e-30)))
    total = float(power.sum() - power[0, 0])
    return {
        "lattice_ratio": float(np.mean(ratios)),
        "lattice_fraction": float(power[on].sum() / total) if total > 0 else 0.0,
    }


def block_edge_ratio(maps: torch.Tensor, period: int) -> float:
    """
    Mean absolute step across the lines of a ``period``-pixel grid over the mean step elsewhere.

    About 1 (or below, for a smooth map) without a block lattice; well above 1 when the map is made of flat blocks
    with edges on the grid (what nearest-neighbour upsampling of a coarse feature map draws).

    Args:
        maps: ``(..., H, W)``.
        period: grid period in pixels; the steps between pixel ``k * period - 1`` and ``k * period`` are "on".
    """
    gx = (maps[..., :, 1:] - maps[..., :, :-1]).abs()
    gy = (maps[..., 1:, :] - maps[..., :-1, :]).abs()
    on_x = torch.arange(gx.shape[-1]) % period == period - 1
    on_y = torch.arange(gy.shape[-2]) % period == period - 1
    on = torch.cat([gx[..., on_x].flatten(), gy[..., on_y, :].flatten()]).mean()
    off = torch.cat([gx[..., ~on_x].flatten(), gy[..., ~on_y, :].flatten()]).mean()
    return float(on / off.clamp_min(1e-30))


# ------------------------------------------------------------------------------------------------------------ run
def _stretch(x: np.ndarray, hi: float | None = None) -> np.ndarray:
    hi = float(np.percentile(x, 99.5)) if hi is None else hi
    return np.clip(x / max(hi, 1e-12), 0.0, 1.0)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _montage(tiles: list[np.ndarray]) -> np.ndarray:
    rgb = [t if t.ndim == 3 else np.repeat(t[..., None], 3, axis=-1) for t in tiles]
    sep = np.ones((rgb[0].shape[0], 2, 3))
    out = []
    for t in rgb:
        out += [t, sep]
    return np.concatenate(out[:-1], axis=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Sample the test cases, compute the maps and the artefact scores; return the report."""
    from monai.bundle import ConfigParser
    from monai.utils import convert_to_tensor

    from monai_diffseg.data import image_folder_datalist, split_datalist
    from monai_diffseg.transforms import EnsembleVariance, MutualInformation, PredictiveEntropy

    torch.set_num_threads(max(1, args.threads))
    bundle = Path(args.bundle)
    data = Path(args.data)
    datalist = image_folder_datalist(data / "images", data / "masks")
    _, _, test = split_datalist(datalist, tuple(args.fractions), seed=args.split_seed)
    if args.max_test is not None:
        test = test[: args.max_test]

    train_cfg = json.loads((bundle / "configs" / "train.json").read_text())
    network_def = dict(train_cfg["network_def"])
    if args.network:
        network_def.update(json.loads(args.network))
    over: dict[str, Any] = {"network_def": network_def, "image_size": list(args.image_size), "seed": args.seed,
                            "device": "$torch.device('cpu')", "labels": True}
    if args.steps is not None:
        over["num_inference_steps"] = args.steps
    if args.members is not None:
        over["num_samples"] = args.members
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(over)
    preprocessing = parser.get_parsed_content("preprocessing")
    network = parser.get_parsed_content("network")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    network.load_state_dict(state)
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    inferer.return_samples = True
    period = int(network.size_divisor)

    png_dir = Path(args.png_dir) if args.png_dir else None
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    variance, entropy, mutual = EnsembleVariance(), PredictiveEntropy(), MutualInformation()
    cases, ent_maps, prob_maps = [], [], []
    start = time.perf_counter()
    with torch.no_grad():
        for k, item in enumerate(test):
            d = preprocessing(dict(item))
            image = convert_to_tensor(d["image"], track_meta=False)[None].float()
            label = convert_to_tensor(d["label_net"], track_meta=False).float()[0]
            samples = inferer(image, network)[0].float()  # (E, 1, H, W)
            mean = samples.mean(0)[0]
            ent = torch.as_tensor(entropy(samples)).float()[0]
            var = torch.as_tensor(variance(samples)).float()[0]
            mi = torch.as_tensor(mutual(samples)).float()[0]
            bg = background_mask(label, mean >= 0.5, args.margin)
            ent_maps.append(ent)
            prob_maps.append(mean)
            inter = float(((mean >= 0.5) & (label > 0.5)).sum())
            dice = 2 * inter / max(float((mean >= 0.5).sum() + (label > 0.5).sum()), 1.0)
            case = {
                "case": item.get("case", str(k)),
                "dice_mean_fusion_net_res": dice,
                "bg_fraction": float(bg.float().mean()),
                "bg_entropy": float(ent[bg].mean()) if bg.any() else None,
                "bg_entropy_p99": float(torch.quantile(ent[bg], 0.99)) if bg.any() else None,
                "bg_variance": float(var[bg].mean()) if bg.any() else None,
                "bg_mi": float(mi[bg].mean()) if bg.any() else None,
                "entropy_mean": float(ent.mean()),
                **{f"case_{key}": v for key, v in lattice_scores(ent[None], period).items()},
            }
            cases.append(case)
            if png_dir is not None and k < args.png_cases:
                img = image[0].permute(1, 2, 0).numpy()
                tiles = [img, mean.numpy(), _stretch(ent.numpy(), math.log(2)), _stretch(ent.numpy()),
                         _stretch(var.numpy()), _stretch(mi.numpy())]
                _save_png(png_dir / f"{case['case']}_montage.png", _montage(tiles))
            print(f"{case['case']}: dice {dice:.3f}  bg entropy {case['bg_entropy']}  "
                  f"lattice ratio {case['case_lattice_ratio']:.2f}", flush=True)
    wall = time.perf_counter() - start
    stack = torch.stack(ent_maps)
    summary: dict[str, Any] = {"num_cases": len(cases), "period": period, "wall_s": round(wall, 1)}
    for key in ("dice_mean_fusion_net_res", "bg_entropy", "bg_entropy_p99", "bg_variance", "bg_mi", "entropy_mean",
                "case_lattice_ratio", "case_lattice_fraction"):
        vals = [c[key] for c in cases if c.get(key) is not None]
        summary[key] = float(np.mean(vals)) if vals else None
    summary.update(lattice_scores(stack, period))
    summary["block_edge_ratio"] = block_edge_ratio(stack, period)
    summary["block_edge_ratio_prob"] = block_edge_ratio(torch.stack(prob_maps), period)
    for p in (4, 8, 32):
        if args.image_size[0] % p == 0 and args.image_size[1] % p == 0:
            summary[f"lattice_ratio_period{p}"] = lattice_scores(stack, p)["lattice_ratio"]
    if png_dir is not None:
        centred = stack - stack.mean(dim=(-2, -1), keepdim=True)
        spec = torch.fft.fftshift(torch.fft.fft2(centred.double()).abs().square().mean(0)).log10().numpy()
        lo, hi = np.percentile(spec, 1), spec.max()
        _save_png(png_dir / "entropy_mean_power_spectrum.png", np.clip((spec - lo) / (hi - lo), 0, 1))
    report = {"command": "python benchmarks/uncertainty_artifacts.py " + " ".join(sys.argv[1:]),
              "checkpoint": str(args.checkpoint), "network_def": network_def, "image_size": list(args.image_size),
              "steps": int(parser.get_parsed_content("num_inference_steps")),
              "members": int(parser.get_parsed_content("num_samples")),
              "test_cases": [c["case"] for c in cases], "summary": summary, "cases": cases}
    print(json.dumps(summary, indent=1))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the report."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
