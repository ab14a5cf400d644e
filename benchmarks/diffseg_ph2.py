# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
DiffSeg (weakly supervised, no masks in training) vs Otsu vs supervised MedSegDiff on PH2, with a seeded split.

    OMP_NUM_THREADS=1 python benchmarks/diffseg_ph2.py --data ../shared/data/ph2 --work /tmp/diffseg_ph2

Steps (all through ``python -m monai.bundle run`` except Otsu):

1. seeded split of the PH2 pairs (``split_datalist``, seed 0: 100 train / 50 test), written in the ISIC 2018 layout:
   the DiffSeg dataset folder has **no training masks at all**; the MedSegDiff folder has them (it is supervised);
2. ``bundles/diffseg_isic2018/configs/train.json`` (lesion model, then healthy model from pseudo-healthy border fills);
3. DiffSeg evaluation with the reference fixed threshold, with Otsu, and with Otsu + DenseCRF random-subset fusion;
4. Otsu on the grayscale image (lesion = darker than the threshold), no learning;
5. ``bundles/medsegdiff_isic2018/configs/train.json`` (supervised, same resolution) and its inference;
6. Dice / Precision / Recall per test case at the original resolution from the written ``<case>_mask.png`` files,
   the mean over cases, the wall times, printed and saved to ``<work>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_diffseg.data import image_folder_datalist, split_datalist  # noqa: E402

DIFFSEG = ROOT / "bundles" / "diffseg_isic2018"
MEDSEGDIFF = ROOT / "bundles" / "medsegdiff_isic2018"


def write_isic(root: Path, train: list[dict], test: list[dict], train_masks: bool) -> None:
    """PH2 pairs in the ISIC 2018 layout (PNG kept lossless); training masks only when ``train_masks``."""
    if root.exists():
        shutil.rmtree(root)
    for split, part, masks in (("Training", train, train_masks), ("Test", test, True)):
        img_dir = root / f"ISIC2018_Task1-2_{split}_Input"
        img_dir.mkdir(parents=True)
        gt_dir = root / f"ISIC2018_Task1_{split}_GroundTruth"
        if masks:
            gt_dir.mkdir(parents=True)
        for item in part:
            case = "ISIC_" + item["case"].replace("IMD", "").zfill(7)
            shutil.copy(item["image"], img_dir / f"{case}.png")
            if masks:
                shutil.copy(item["label"], gt_dir / f"{case}_segmentation.png")


def bundle_run(bundle: Path, configs: list[str], args: dict, log: Path) -> float:
    """Run ``python -m monai.bundle run`` and return its wall time (s)."""
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0] if len(files) == 1 else str(files),
           "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--logging_file", str(bundle / "configs" / "logging.conf")]  # fmt: skip
    for key, value in args.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    start = time.time()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        subprocess.run(
            cmd,
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        )
    return time.time() - start


def scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Dice, precision, recall of binary masks (both empty: 1)."""
    tp = float(np.logical_and(pred, gt).sum())
    ps, gs = float(pred.sum()), float(gt.sum())
    dice = 2 * tp / (ps + gs) if ps + gs else 1.0
    precision = tp / ps if ps else float(gs == 0)
    recall = tp / gs if gs else 1.0
    return dice, precision, recall


def evaluate_dir(pred_dir: Path, test: list[dict]) -> dict:
    rows = []
    for item in test:
        case = "ISIC_" + item["case"].replace("IMD", "").zfill(7)
        gt = np.array(Image.open(item["label"]).convert("L")) > 127
        pred = np.array(Image.open(pred_dir / f"{case}_mask.png")) > 127
        if pred.shape != gt.shape:
            raise ValueError(f"{case}: prediction {pred.shape} vs ground truth {gt.shape}")
        rows.append(scores(pred, gt))
    arr = np.array(rows)
    return {"dice": float(arr[:, 0].mean()), "precision": float(arr[:, 1].mean()), "recall": float(arr[:, 2].mean()),
            "dice_std": float(arr[:, 0].std()), "n": len(rows)}  # fmt: skip


def otsu_dir(out: Path, test: list[dict]) -> float:
    from skimage.filters import threshold_otsu

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for item in test:
        case = "ISIC_" + item["case"].replace("IMD", "").zfill(7)
        rgb = np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.float64)
        gray = rgb @ np.array([0.299, 0.587, 0.114])
        mask = gray < threshold_otsu(gray)
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"{case}_mask.png")
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ph2"))
    parser.add_argument("--work", default="/tmp/diffseg_ph2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lesion_epochs", type=int, default=60)
    parser.add_argument("--healthy_epochs", type=int, default=60)
    parser.add_argument("--medsegdiff_epochs", type=int, default=30)
    parser.add_argument("--skip", nargs="*", default=[], choices=["diffseg", "medsegdiff"])
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = image_folder_datalist(os.path.join(args.data, "images"), os.path.join(args.data, "masks"))
    frac = args.num_train / len(pairs)
    train, test = split_datalist(pairs, (frac, 1.0 - frac), seed=args.seed)
    split = {"seed": args.seed, "train": [p["case"] for p in train], "test": [p["case"] for p in test]}
    (work / "split.json").write_text(json.dumps(split, indent=1))
    size = [args.size, args.size]
    results: dict = {"split": {"seed": args.seed, "train": len(train), "test": len(test)}, "size": size, "methods": {}}
    if (work / "results.json").is_file():
        results["methods"] = json.loads((work / "results.json").read_text()).get("methods", {})

    def record(name: str, pred_dir: Path, **extra) -> None:
        results["methods"][name] = {**evaluate_dir(pred_dir, test), **extra}
        print(name, results["methods"][name], flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=1))

    otsu_s = otsu_dir(work / "otsu", test)
    record("otsu_gray", work / "otsu", train_s=0.0, infer_s=otsu_s)

    if "diffseg" not in args.skip:
        data = work / "ph2_nomasks"
        write_isic(data, train, test, train_masks=False)
        assert not (data / "ISIC2018_Task1_Training_GroundTruth").exists()  # no training mask anywhere
        common = {"dataset_dir": str(data), "bundle_root": str(work / "diffseg"), "image_size": size,
                  "channels": [16, 32, 64], "num_workers": 0}  # fmt: skip
        train_s = bundle_run(DIFFSEG, ["train.json"], {**common, "batch_size": 16, "cache_rate": 1.0,
                             "lesion_num_epochs": args.lesion_epochs, "healthy_num_epochs": args.healthy_epochs,
                             "lesion_learning_rate": 1e-3, "healthy_learning_rate": 1e-3}, work / "diffseg_train.log")  # fmt: skip
        results["diffseg_train_s"] = train_s
        variants = {
            "diffseg_fixed": {"threshold_method": "fixed", "smooth_sigma": 0.0},
            "diffseg_otsu": {"threshold_method": "otsu", "smooth_sigma": 1.0},
            "diffseg_otsu_crf": {"threshold_method": "otsu", "smooth_sigma": 1.0, "fusion": "subset_crf"},
            "diffseg_fixed_crf": {"threshold_method": "fixed", "smooth_sigma": 0.0, "fusion": "subset_crf"},
        }
        for name, extra in variants.items():
            out = work / name
            infer_s = bundle_run(DIFFSEG, ["inference.json", "evaluate.json"], {**common, "output_dir": str(out), **extra},
                                 work / f"{name}.log")  # fmt: skip
            record(name, out, train_s=train_s, infer_s=infer_s, options=extra)

    if "medsegdiff" not in args.skip:
        data = work / "ph2_masks"
        write_isic(data, train, test, train_masks=True)
        common = {
            "dataset_dir": str(data),
            "bundle_root": str(work / "medsegdiff"),
            "image_size": size,
            "num_workers": 0,
        }
        train_s = bundle_run(MEDSEGDIFF, ["train.json"], {**common, "num_epochs": args.medsegdiff_epochs, "val_interval": 10,
                             "batch_size": 8}, work / "medsegdiff_train.log")  # fmt: skip
        out = work / "medsegdiff_pred"
        infer_s = bundle_run(
            MEDSEGDIFF, ["inference.json"], {**common, "output_dir": str(out)}, work / "medsegdiff_infer.log"
        )
        record("medsegdiff_supervised", out, train_s=train_s, infer_s=infer_s)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
