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
- ``edge_spectrum_ratio`` (the lattice's spectral signature, after Wang, Bovik & Evans, "Blind measurement of
  blocking artifacts in images", ICIP 2000): the power spectrum, along each row (column), of the absolute
  differences between neighbouring pixels of the entropy map, averaged over rows (columns) and cases; block edges
  every ``P`` pixels (``P`` = the network's total stride, :attr:`MedSegDiff.size_divisor`) put peaks at the
  frequencies ``k n / P``. The score is the power at those frequencies over the mean power of their +-1, +-2
  neighbours, averaged over the peaks and both axes: about 1 without a lattice, large with one. Also reported for
  ``P / 2`` and ``P / 4`` (the finer decoder levels);
- ``peak_ratio_2d``: the same peak-over-neighbours ratio on the 2D power spectrum of the entropy map itself, at the
  off-axis lattice frequencies ``(a H / P, b W / P)``, ``a, b != 0`` (the borders of a non-periodic map put a
  cross on the axes). Weaker: flat boxes with content-dependent levels are not a strictly periodic pattern;
- ``block_edge_ratio`` (of the entropy map) and ``block_edge_ratio_prob`` (of the mean probability): the mean
  absolute step between neighbouring pixels across the lines of the period-``P`` grid over the mean step elsewhere.
  About 1 (below 1 for smooth maps) without blocks; flat ``P``-pixel boxes with sharp edges make it large.

It also writes, with ``--png-dir``: per case a montage (image | mean probability | entropy as the bundle saves it
| entropy, variance and mutual information contrast-stretched to their 99.5th percentile), and the log power
spectra of the entropy maps and of their row differences, averaged over the cases.

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

__all__ = ["background_mask", "block_edge_ratio", "edge_spectrum_ratio", "main", "parse_args", "peak_ratio_2d", "run"]


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
    p.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="far background: this fraction of the image side away from the annotated and the predicted lesion",
    )
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


def _peak_ratio(power: torch.Tensor, peaks: list[tuple[int, ...]], offsets: list[tuple[int, ...]]) -> float:
    """Mean over ``peaks`` of the power there over the mean power at ``peak + offset`` (indices wrap around)."""
    ratios = []
    for peak in peaks:
        neigh = [power[tuple((i + o) % n for i, o, n in zip(peak, off, power.shape))] for off in offsets]
        ratios.append(float(power[peak] / (torch.stack(neigh).mean() + 1e-30)))
    return float(np.mean(ratios))


def edge_spectrum_ratio(maps: torch.Tensor, period: int) -> float:
    """
    Spectral lattice score of ``maps`` ``(K, H, W)`` for block edges every ``period`` pixels.

    Along each axis: the absolute differences between neighbouring pixels (circular), mean-removed per line, their
    1D power spectrum averaged over lines and maps, and the power at ``k n / period`` (``k >= 1``) over the mean
    power at ``+-1, +-2`` bins, averaged over the peaks; then the mean of the two axes. About 1 without a
    lattice; well above 1 when edges sit on the grid (Wang, Bovik & Evans, ICIP 2000).
    """
    maps = maps.double()
    scores = []
    for dim in (-1, -2):
        n = maps.shape[dim]
        if n % period:
            raise ValueError(f"edge_spectrum_ratio: map size {tuple(maps.shape[-2:])} must be divisible by {period}.")
        diff = (maps - torch.roll(maps, 1, dim)).abs()
        diff = diff - diff.mean(dim, keepdim=True)
        power = torch.fft.rfft(diff, dim=dim).abs().square().movedim(dim, -1).reshape(-1, n // 2 + 1).mean(0)
        step = n // period
        peaks = [(k,) for k in range(step, n // 2 + 1, step)]
        scores.append(_peak_ratio(power, peaks, [(-2,), (-1,), (1,), (2,)]))
    return float(np.mean(scores))


def peak_ratio_2d(maps: torch.Tensor, period: int) -> float:
    """
    Power at the off-axis lattice frequencies ``(a H / P, b W / P)``, ``a, b != 0``, of the 2D power spectrum of
    ``maps`` ``(K, H, W)`` (mean-removed, averaged over ``K``), over the mean power of their 8 neighbours.
    """
    maps = maps.double()
    power = torch.fft.fft2(maps - maps.mean(dim=(-2, -1), keepdim=True)).abs().square().mean(0)
    h, w = power.shape
    if h % period or w % period:
        raise ValueError(f"peak_ratio_2d: map size {(h, w)} must be divisible by the period {period}.")
    peaks = [(i, j) for i in range(h // period, h, h // period) for j in range(w // period, w, w // period)]
    offsets = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
    return _peak_ratio(power, peaks, offsets)


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
    over: dict[str, Any] = {
        "network_def": network_def,
        "image_size": list(args.image_size),
        "seed": args.seed,
        "device": "$torch.device('cpu')",
        "labels": True,
    }
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
                "edge_spectrum_ratio": edge_spectrum_ratio(ent[None], period),
                "block_edge_ratio": block_edge_ratio(ent, period),
            }
            cases.append(case)
            if png_dir is not None and k < args.png_cases:
                img = image[0].permute(1, 2, 0).numpy()
                tiles = [
                    img,
                    mean.numpy(),
                    _stretch(ent.numpy(), math.log(2)),
                    _stretch(ent.numpy()),
                    _stretch(var.numpy()),
                    _stretch(mi.numpy()),
                ]
                _save_png(png_dir / f"{case['case']}_montage.png", _montage(tiles))
            print(
                f"{case['case']}: dice {dice:.3f}  bg entropy {case['bg_entropy']}  "
                f"edge spectrum ratio {case['edge_spectrum_ratio']:.2f}",
                flush=True,
            )
    wall = time.perf_counter() - start
    stack = torch.stack(ent_maps)
    summary: dict[str, Any] = {"num_cases": len(cases), "period": period, "wall_s": round(wall, 1)}
    for key in ("dice_mean_fusion_net_res", "bg_entropy", "bg_entropy_p99", "bg_variance", "bg_mi", "entropy_mean"):
        vals = [c[key] for c in cases if c.get(key) is not None]
        summary[key] = float(np.mean(vals)) if vals else None
    for p in (period, period // 2, period // 4):  # the coarsest and the next two decoder levels
        if p >= 2:
            summary[f"edge_spectrum_ratio_p{p}"] = edge_spectrum_ratio(stack, p)
    summary["peak_ratio_2d"] = peak_ratio_2d(stack, period)
    summary["block_edge_ratio"] = block_edge_ratio(stack, period)
    summary["block_edge_ratio_prob"] = block_edge_ratio(torch.stack(prob_maps), period)
    if png_dir is not None:
        centred = (stack - stack.mean(dim=(-2, -1), keepdim=True)).double()
        diff = (stack - torch.roll(stack, 1, -1)).abs().double()
        for name, spec in (
            ("entropy_power_spectrum", torch.fft.fft2(centred)),
            ("entropy_row_difference_power_spectrum", torch.fft.fft2(diff - diff.mean((-2, -1), True))),
        ):
            logp = torch.fft.fftshift(spec.abs().square().mean(0)).clamp_min(1e-30).log10().numpy()
            lo, hi = np.percentile(logp, 1), logp.max()
            _save_png(png_dir / f"{name}.png", np.clip((logp - lo) / (hi - lo), 0, 1))
    report = {
        "command": "python benchmarks/uncertainty_artifacts.py " + " ".join(sys.argv[1:]),
        "checkpoint": str(args.checkpoint),
        "network_def": network_def,
        "image_size": list(args.image_size),
        "steps": int(parser.get_parsed_content("num_inference_steps")),
        "members": int(parser.get_parsed_content("num_samples")),
        "test_cases": [c["case"] for c in cases],
        "summary": summary,
        "cases": cases,
    }
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
