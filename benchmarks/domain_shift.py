# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Does a per-case uncertainty score rise with domain shift and track the error? A trained MedSegDiff checkpoint is
tested through the bundle's own ``inference.json`` (``ConfigWorkflow``: checkpoint loader, preprocessing, sampler,
fusion, ``metrics.json``) on the test split with its images corrupted at increasing severity:

- ``blur``: Gaussian blur, sigma 0.5 / 1 / 2 / 3 / 5 px per 256 px of the image's shorter side (so the same level
  blurs PH2's 256x192 and Kvasir-SEG's ~600 px photos alike relative to the content);
- ``noise``: additive Gaussian noise, sigma 5 / 10 / 20 / 35 / 50 (of 255), seeded per case;
- ``contrast``: ``(x - mean) * c + mean`` with c = 0.75 / 0.5 / 0.35 / 0.2 / 0.1;
- ``jpeg``: JPEG re-encoding at quality 40 / 25 / 15 / 8 / 3;

(``--severities`` picks levels 1-5 of these tables, like ImageNet-C's five levels.) Masks are never corrupted. Per
case, ``metrics.json`` gives Dice, ``sample_diversity`` (the ensemble's mean pairwise 1 - IoU, the bundle's current
score) and the :class:`monai_diffseg.metrics.ShiftScore` scores (``anchor_disagreement`` = 1 - Dice(anchor head,
fused ensemble), ``ensemble_dice_error`` (mean 1 - Dice of the members and the anchor against the fused mask),
``entropy_per_area``, ``input_distance`` of the input's acquisition statistics and ``feature_distance`` of the
condition encoding to the training images', whose statistics are computed here from the split's training images
(at most ``--stats-images``, evenly spread) through the bundle's preprocessing, as the bundle's training writes them
with :class:`monai_diffseg.handlers.ShiftStatisticsWriter`).

Reported per condition (clean + corruption x severity): mean Dice and the mean of every score; pooled over all
conditions: Spearman(score, 1 - Dice) over cases and Spearman(score, severity level) over cases (0 = clean); per
corruption: Spearman of the per-severity mean score with the level (does the mean rise monotonically?).

Run (from the repository root; one CPU thread)::

    python benchmarks/domain_shift.py --data ../shared/data/ph2 \\
        --checkpoint /tmp/remeasure/ph2/medsegdiff/models/model.pt --image-size 128 --output runs/shift/ph2.json
    python benchmarks/domain_shift.py --data ../shared/data/kvasir_seg --mask-threshold 127 --max-test 60 \\
        --checkpoint /tmp/remeasure/kvasir/medsegdiff/models/model.pt --image-size 128 --output runs/shift/kvasir.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image, ImageFilter
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_utils import machine_info, write_json  # noqa: E402

from monai_diffseg.data import image_folder_datalist, split_datalist  # noqa: E402
from monai_diffseg.handlers import ShiftStatisticsWriter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "bundles" / "medsegdiff_isic2018"
#: severity tables, levels 1-5
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "blur": (0.5, 1.0, 2.0, 3.0, 5.0),
    "noise": (5.0, 10.0, 20.0, 35.0, 50.0),
    "contrast": (0.75, 0.5, 0.35, 0.2, 0.1),
    "jpeg": (40, 25, 15, 8, 3),
}
SCORES = (
    "sample_diversity",
    "anchor_disagreement",
    "ensemble_dice_error",
    "entropy_per_area",
    "input_distance",
    "feature_distance",
)

__all__ = ["CORRUPTIONS", "corrupt", "main", "parse_args", "run_domain_shift"]


def corrupt(image: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    """``image`` (RGB) corrupted by ``kind`` at severity ``level`` (1-5, :data:`CORRUPTIONS`); level 0: unchanged."""
    if level == 0:
        return image
    if kind not in CORRUPTIONS or not 1 <= level <= len(CORRUPTIONS[kind]):
        raise ValueError(f"corrupt: unknown corruption '{kind}' or level {level} (choose {sorted(CORRUPTIONS)}, 1-5).")
    value = CORRUPTIONS[kind][level - 1]
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=value * min(image.size) / 256.0))
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(value))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    x = np.asarray(image).astype(np.float64)
    if kind == "noise":
        x = x + np.random.default_rng(seed).normal(0.0, value, size=x.shape)
    else:  # contrast
        x = (x - x.mean(axis=(0, 1), keepdims=True)) * value + x.mean(axis=(0, 1), keepdims=True)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder with images/ + masks/ paired by stem")
    p.add_argument("--checkpoint", required=True, help="trained MedSegDiff model.pt of the bundle")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--mask-threshold", type=float, default=None, help="mask > threshold (Kvasir-SEG JPEG masks: 127)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2))
    p.add_argument("--max-test", type=int, default=None, help="first cases of the test split only")
    p.add_argument("--image-size", type=int, nargs="+", default=[128])
    p.add_argument("--corruptions", default="blur,noise,contrast,jpeg")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5], help="levels 1-5 of the tables")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the bundle's)")
    p.add_argument("--members", type=int, default=None, help="ensemble size (default: the bundle's)")
    p.add_argument("--fusion", default=None, help="fusion (default: the bundle's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="extra inference.json override")
    p.add_argument("--stats-images", type=int, default=200, help="training images for the shift statistics (spread)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    if len(args.image_size) == 1:
        args.image_size = args.image_size * 2
    args.corruptions = [c.strip() for c in args.corruptions.split(",") if c.strip()]
    for c in args.corruptions:
        if c not in CORRUPTIONS:
            p.error(f"unknown corruption '{c}'; choose from {sorted(CORRUPTIONS)}.")
    if any(not 1 <= s <= 5 for s in args.severities):
        p.error("--severities must be levels 1-5.")
    return args


def _workflow(args: argparse.Namespace, root: Path, **overrides: Any) -> ConfigWorkflow:
    configs = Path(args.bundle) / "configs"
    root.mkdir(parents=True, exist_ok=True)
    wf = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf") if (configs / "logging.conf").is_file() else None,
        workflow_type="infer",
        bundle_root=str(root),
        **overrides,
    )
    wf.initialize()
    return wf


def _base_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {
        "image_size": list(args.image_size),
        "num_workers": 0,
        "device": "$torch.device('cpu')",
        "ckpt_path": str(Path(args.checkpoint).resolve()),
        "case_progress": False,
        "writers": [],  # scores only: no PNGs
    }
    if args.mask_threshold is not None:
        cfg = json.loads((Path(args.bundle) / "configs" / "inference.json").read_text())
        ids = []  # every BinaryMaskd of the preprocessing, at the top level or in a nested Compose
        for i, t in enumerate(cfg["preprocessing"]["transforms"]):
            nested = t.get("transforms", []) if isinstance(t, dict) else []
            for j, u in enumerate(nested):
                if str(u.get("_target_", "")).endswith("BinaryMaskd"):
                    ids.append(f"preprocessing#transforms#{i}#transforms#{j}")
            if isinstance(t, dict) and str(t.get("_target_", "")).endswith("BinaryMaskd"):
                ids.append(f"preprocessing#transforms#{i}")
        if not ids:
            raise ValueError("--mask-threshold: the bundle's inference.json has no nested BinaryMaskd.")
        over.update({f"{i}#threshold": args.mask_threshold for i in ids})
    for key, value in (("num_inference_steps", args.steps), ("num_samples", args.members), ("fusion", args.fusion)):
        if value is not None:
            over[key] = value
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    return over


def _shift_stats(args: argparse.Namespace, train: list[dict[str, str]], work: Path) -> Path:
    """Training-set statistics (input + condition features) as the bundle's training writes them at its end."""
    wf = _workflow(args, work / "stats", **_base_overrides(args), datalist=train[:1])
    get = wf.parser.get_parsed_content
    writer = ShiftStatisticsWriter(
        get("network"),
        train,
        get("preprocessing"),
        model_file=args.checkpoint,
        output_file=work / "shift_stats.pt",
        max_images=args.stats_images,
    )
    return Path(writer.write())


def _spearman(x: list[float], y: list[float]) -> float | None:
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None
    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def run_domain_shift(args: argparse.Namespace) -> dict[str, Any]:
    """Corrupt, test every condition through the bundle, summarise; returns the report."""
    torch.set_num_threads(max(1, args.threads))
    data = Path(args.data).resolve()
    work = Path(args.work_dir or ROOT / "runs" / "shift" / f"{data.name}_{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    datalist = image_folder_datalist(data / "images", data / "masks")
    train, _, test = split_datalist(datalist, tuple(args.fractions), seed=args.split_seed)
    test = test[: args.max_test] if args.max_test else test
    stats_path = _shift_stats(args, train, work)
    score_cfg = [
        {"_target_": "monai_diffseg.metrics.ShiftScore", "network": "@network", "feature_stats": str(stats_path)}
    ]

    conditions = [("clean", 0)] + [(c, s) for c in args.corruptions for s in args.severities]
    cases: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for kind, level in conditions:
        name = "clean" if level == 0 else f"{kind}{level}"
        folder = work / name
        (folder / "images").mkdir(parents=True, exist_ok=True)
        items = []
        for k, d in enumerate(test):
            out = folder / "images" / f"{d['case']}.png"
            if not out.is_file():
                corrupt(Image.open(d["image"]).convert("RGB"), kind, level, seed=1000 * level + k).save(out)
            items.append({**d, "image": str(out)})
        start = time.perf_counter()
        wf = _workflow(
            args,
            folder,
            **_base_overrides(args),
            datalist=items,
            output_dir=str(folder / "out"),
            **{"case_writer#case_scores": score_cfg},
        )
        wf.run()
        wf.finalize()
        wall = time.perf_counter() - start
        written = json.loads((folder / "out" / "metrics.json").read_text())["cases"]
        row: dict[str, Any] = {"condition": name, "corruption": kind, "level": level, "cases": len(written)}
        for c in written:
            cases.append({"condition": name, "corruption": kind, "level": level, **c})
        for key in ("dice",) + SCORES:
            vals = [c[key] for c in written if c.get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None
        row["s_per_case"] = round(wall / max(1, len(written)), 2)
        summary.append(row)
        print(f"{name:<10}" + "".join(f"  {k}={_fmt(row[k])}" for k in ("dice",) + SCORES), flush=True)

    error = [None if c.get("dice") is None else 1.0 - c["dice"] for c in cases]
    clean = {c["case"]: c for c in cases if c["level"] == 0}
    shifted = [c for c in cases if c["level"] > 0 and c.get("dice") is not None]
    pooled = {
        s: {
            # per corrupted case: does the score rise where that case's error rises (case difficulty removed)?
            "spearman_change": _spearman(
                [None if c.get(s) is None else c[s] - clean[c["case"]][s] for c in shifted],
                [clean[c["case"]]["dice"] - c["dice"] for c in shifted],
            ),
            "spearman_error": _spearman([c.get(s) for c in cases], error),
            "spearman_level": _spearman([c.get(s) for c in cases], [float(c["level"]) for c in cases]),
            "spearman_error_clean": _spearman(
                [c.get(s) for c in cases if c["level"] == 0], [e for c, e in zip(cases, error) if c["level"] == 0]
            ),
        }
        for s in SCORES
    }
    per_corruption = {
        kind: {
            s: _spearman(
                [r[s] for r in summary if r["corruption"] in (kind, "clean")],
                [float(r["level"]) for r in summary if r["corruption"] in (kind, "clean")],
            )
            for s in ("dice",) + SCORES
        }
        for kind in args.corruptions
    }
    worst = max(args.severities)
    clean_row = next(r for r in summary if r["level"] == 0)
    change_at_worst = {
        kind: {
            s: _relative_change(
                next(r for r in summary if r["corruption"] == kind and r["level"] == worst)[s], clean_row[s]
            )
            for s in ("dice",) + SCORES
        }
        for kind in args.corruptions
    }
    report = {
        "command": getattr(args, "_argv", None),
        "data": str(data),
        "checkpoint": str(args.checkpoint),
        "split": {"seed": args.split_seed, "train": len(train), "test": len(test)},
        "severity_tables": {k: list(v) for k, v in CORRUPTIONS.items()},
        "severities": list(args.severities),
        "machine": ", ".join(f"{k}={v}" for k, v in machine_info(torch.device("cpu")).items()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "summary": summary,
        "pooled": pooled,
        "per_corruption_mean_vs_level": per_corruption,
        "per_corruption_change_at_worst": change_at_worst,
        "cases": cases,
    }
    output = Path(args.output) if args.output else work / "report.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(str(output), report)
    print_report(report)
    return report


def _relative_change(value: float | None, clean: float | None) -> float | None:
    """``(value - clean) / |clean|`` (the mean's change at a level relative to the clean images)."""
    if value is None or clean is None or clean == 0:
        return None
    return (value - clean) / abs(clean)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_report(report: dict[str, Any]) -> None:
    """Per-condition table and the pooled rank correlations."""
    cols = ("dice",) + SCORES
    print(f"\n{report['data']} | {report['split']['test']} test cases | checkpoint {report['checkpoint']}")
    print(f"{'condition':<12}" + "".join(f"{c:>20}" for c in cols))
    for r in report["summary"]:
        print(f"{r['condition']:<12}" + "".join(f"{_fmt(r[c]):>20}" for c in cols))
    print(
        "\nPooled over all conditions (cases): Spearman with 1 - Dice / with severity level / clean only with 1 - Dice"
        " / change from clean with the Dice drop (corrupted cases)"
    )
    for s, v in report["pooled"].items():
        row = ("spearman_error", "spearman_level", "spearman_error_clean", "spearman_change")
        print(f"  {s:<22}" + "".join(f"{_fmt(v.get(k)):>8}" for k in row))
    print("\nPer corruption: Spearman(condition mean, level 0..5)")
    for kind, v in report["per_corruption_mean_vs_level"].items():
        print(f"  {kind:<10}" + "".join(f"  {s}={_fmt(x)}" for s, x in v.items()))
    print(f"\nPer corruption: relative change of the condition mean at level {max(report['severities'])} vs clean")
    for kind, v in report["per_corruption_change_at_worst"].items():
        print(f"  {kind:<10}" + "".join(f"  {s}={_fmt(x)}" for s, x in v.items()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the report."""
    args = parse_args(argv)
    args._argv = "python benchmarks/domain_shift.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    return run_domain_shift(args)


if __name__ == "__main__":
    main()
