# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""BraTS at a CPU budget (issue 14 items 2 and 4): the medsegdiff_brats bundle vs a MONAI UNet (Dice loss) at equal
iterations on ../shared/data/brats18 downsampled to 2 mm (benchmarks/brats_downsample.py), seeded split 8 train / 2 val
/ 2 test, Dice / HD95 per region on the test volumes in their own geometry.

- ``--mode 3d`` (default): the 3D bundle (48³ patches, sliding-window ensembles) vs a 3D UNet on the same patches.
- ``--mode 2d``: the 2D slice mode (``train_2d.json`` / ``inference_2d.json``: 96x96 axial slices, slice-by-slice
  ensembles stacked into volumes) vs a 2D UNet on the same slices, inferred with MONAI's ``SliceInferer``.

Usage: python benchmarks/brats_cpu_compare.py DATA_2MM OUT_DIR EPOCHS [--mode 2d] [--models medsegdiff,unet]
[--unet-loss dice_bce]
(4 iterations per epoch: 8 volumes, 2 per batch; 2 patches per volume in 3D, 8 slices in 2D)"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader, decollate_batch, list_data_collate
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.losses import DiceFocalLoss, DiceLoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.nets import UNet
from monai.transforms import Invertd

from monai_diffseg.data import CheckedCacheDataset, brats_datalist

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("data")
parser.add_argument("out", type=Path)
parser.add_argument("epochs", type=int)
parser.add_argument("--mode", choices=("3d", "2d"), default="3d")
parser.add_argument("--models", default="medsegdiff,unet")
parser.add_argument(
    "--unet-loss",
    choices=("dice", "dice_bce"),
    default="dice",
    help="baseline loss: Dice (run 15) or Dice + per-channel BCE (DiceFocalLoss gamma=0), reported as unet_dice_bce",
)
cli = parser.parse_args()
data, out, epochs, models = cli.data, cli.out, cli.epochs, cli.models.split(",")
B = Path(__file__).resolve().parents[1] / "bundles" / "medsegdiff_brats"
SPLIT = {"val_fraction": 2 / 12, "test_fraction": 2 / 12, "split_seed": 0}
if cli.mode == "3d":
    TRAIN_CONFIGS, INFER_CONFIGS = ["train.json"], ["inference.json"]
    ROI, TRAIN_ROI, PATCHES = [48, 48, 48], [48, 48, 48], 2
else:
    TRAIN_CONFIGS, INFER_CONFIGS = ["train.json", "train_2d.json"], ["inference.json", "inference_2d.json"]
    ROI, TRAIN_ROI, PATCHES = [96, 96], [96, 96, 1], 8
COMMON = {"dataset_dir": data, "num_workers": 0, **SPLIT}
torch.set_num_threads(1)
report = {"data": data, "mode": cli.mode, "epochs": epochs, "iterations": 4 * epochs, "roi_size": ROI, **COMMON}
report_file = out / f"report_{cli.mode}.json"
if report_file.exists():  # a second run for the other model keeps the first one's numbers
    report = {**json.loads(report_file.read_text()), **report}


def workflow(configs, kind, **kw):
    files = [str(B / "configs" / c) for c in configs]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(B / "configs/metadata.json"),
        logging_file=str(B / "configs/logging.conf"),
        workflow_type=kind,
        **kw,
    )


def save() -> None:
    print(json.dumps(report, indent=1), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=1))


# 1. the diffusion bundle, trained and evaluated by monai.bundle's ConfigWorkflow
if "medsegdiff" in models:
    t = time.time()
    wf = workflow(
        TRAIN_CONFIGS,
        "train",
        bundle_root=str(out / f"medsegdiff_{cli.mode}"),
        num_epochs=epochs,
        val_interval=epochs,
        batch_size=2,
        num_patches=PATCHES,
        roi_size=TRAIN_ROI,
        val_num_inference_steps=5,
        val_num_samples=2,
        resume=False,
        **COMMON,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    report["medsegdiff_train_s"] = time.time() - t
    t = time.time()
    ev = workflow(
        [*INFER_CONFIGS, "evaluate.json"],
        "eval",
        bundle_root=str(out / f"medsegdiff_{cli.mode}"),
        data_split="test",
        roi_size=ROI,
        output_dir=str(out / f"medsegdiff_{cli.mode}" / "test"),
        **COMMON,
    )
    ev.initialize()
    ev.run()
    ev.finalize()
    report["medsegdiff_test_s"] = time.time() - t
    m = json.loads((out / f"medsegdiff_{cli.mode}" / "test" / "metrics.json").read_text())
    keys = ("dice_tc", "dice_wt", "dice_et", "dice", "hd95_tc", "hd95_wt", "hd95_et")
    report["medsegdiff"] = {k: m.get(f"mean_{k}") for k in keys}
    report["medsegdiff_cases"] = [{k: c.get(k) for k in ("case", *keys)} for c in m["cases"]]
    save()

# 2. MONAI UNet (sigmoid Dice loss) on the same transforms, patches / slices, batches and iterations
if "unet" in models:
    torch.manual_seed(0)
    train_cfg = ConfigParser()
    train_cfg.read_config([str(B / "configs" / c) for c in TRAIN_CONFIGS])
    for k, v in {**COMMON, "batch_size": 2, "num_patches": PATCHES, "roi_size": TRAIN_ROI}.items():
        train_cfg[k] = v
    ds = CheckedCacheDataset(
        brats_datalist(
            data, split="train", val_fraction=SPLIT["val_fraction"], test_fraction=SPLIT["test_fraction"], seed=0
        ),
        transform=train_cfg.get_parsed_content("train#preprocessing"),
        cache_rate=1.0,
        num_workers=0,
    )
    loader = DataLoader(ds, batch_size=2, shuffle=True, drop_last=True, num_workers=0)
    net = UNet(len(ROI), 4, 3, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, 5e-5)
    loss_fn = DiceLoss(sigmoid=True) if cli.unet_loss == "dice" else DiceFocalLoss(sigmoid=True, gamma=0.0)
    name = "unet" if cli.unet_loss == "dice" else "unet_dice_bce"
    t = time.time()
    for _epoch in range(epochs):
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
        sched.step()
    report[f"{name}_train_s"] = time.time() - t
    inf_cfg = ConfigParser()
    inf_cfg.read_config([str(B / "configs" / c) for c in INFER_CONFIGS])
    for k, v in {**COMMON, "data_split": "test"}.items():
        inf_cfg[k] = v
    pre = inf_cfg.get_parsed_content("preprocessing")
    if cli.mode == "3d":
        inferer = SlidingWindowInferer(ROI, 1, overlap=0.25, mode="gaussian")
    else:
        inferer = SliceInferer(spatial_dim=2, roi_size=ROI, sw_batch_size=16, overlap=0.25)
    dice, hd = (
        DiceMetric(include_background=True, reduction="none"),
        HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none"),
    )
    net.eval()
    cases = []
    for item in inf_cfg.get_parsed_content("datalist"):
        d = pre(dict(item))
        batch = list_data_collate([d])
        with torch.no_grad():
            batch["pred"] = torch.sigmoid(inferer(batch["image"], net))
        d = Invertd("pred", transform=pre, orig_keys="image")(decollate_batch(batch)[0])
        p, y = (d["pred"] >= 0.5).float()[None], d["label"][None].float()
        dc, hc = dice(p, y)[0], hd(p, y)[0]
        cases.append({"case": item["case"], **{f"dice_{r}": float(dc[i]) for i, r in enumerate(("tc", "wt", "et"))}})
    dv, hv = dice.aggregate().mean(0), hd.aggregate().nanmean(0)
    report[name] = {
        "dice_tc": float(dv[0]),
        "dice_wt": float(dv[1]),
        "dice_et": float(dv[2]),
        "dice": float(dv.mean()),
        "hd95_tc": float(hv[0]),
        "hd95_wt": float(hv[1]),
        "hd95_et": float(hv[2]),
    }
    report[f"{name}_cases"] = cases
    save()
