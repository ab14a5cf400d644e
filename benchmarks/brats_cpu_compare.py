# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""BraTS at a CPU budget (issue 14 item 4): the medsegdiff_brats bundle vs a MONAI 3D UNet (Dice loss) at equal iterations on
../shared/data/brats18 downsampled to 2 mm (benchmarks/brats_downsample.py), seeded split 8 train / 2 val / 2 test.
Usage: python benchmarks/brats_cpu_compare.py DATA_2MM OUT_DIR EPOCHS   (4 iterations per epoch: 8 volumes, 2 per batch)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader, decollate_batch, list_data_collate
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.nets import UNet
from monai.transforms import Invertd

from monai_diffseg.data import CheckedCacheDataset, brats_datalist

data, out, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
B = Path(__file__).resolve().parents[1] / "bundles" / "medsegdiff_brats"
SPLIT = {"val_fraction": 2 / 12, "test_fraction": 2 / 12, "split_seed": 0}
COMMON = {"dataset_dir": data, "roi_size": [48, 48, 48], "num_workers": 0, **SPLIT}
torch.set_num_threads(1)
report = {"data": data, "epochs": epochs, "iterations": 4 * epochs, **COMMON}


def workflow(configs, kind, **kw):
    files = [str(B / "configs" / c) for c in configs]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(B / "configs/metadata.json"),
        logging_file=str(B / "configs/logging.conf"),
        workflow_type=kind,
        **kw,
    )


# 1. the diffusion bundle, trained and evaluated by monai.bundle's ConfigWorkflow
t = time.time()
wf = workflow(
    ["train.json"],
    "train",
    bundle_root=str(out / "medsegdiff"),
    num_epochs=epochs,
    val_interval=epochs,
    batch_size=2,
    num_patches=2,
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
    ["inference.json", "evaluate.json"],
    "eval",
    bundle_root=str(out / "medsegdiff"),
    data_split="test",
    output_dir=str(out / "medsegdiff" / "test"),
    **COMMON,
)
ev.initialize()
ev.run()
ev.finalize()
report["medsegdiff_test_s"] = time.time() - t
m = json.loads((out / "medsegdiff" / "test" / "metrics.json").read_text())
report["medsegdiff"] = {
    k: m.get(f"mean_{k}") for k in ("dice_tc", "dice_wt", "dice_et", "dice", "hd95_tc", "hd95_wt", "hd95_et")
}
print(json.dumps(report, indent=1), flush=True)

# 2. MONAI UNet (3D, sigmoid Dice loss) on the same transforms, patches, batches and iterations
torch.manual_seed(0)
train_cfg = ConfigParser()
train_cfg.read_config(str(B / "configs/train.json"))
for k, v in {**COMMON, "batch_size": 2, "num_patches": 2}.items():
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
net = UNet(3, 4, 3, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, 5e-5)
loss_fn = DiceLoss(sigmoid=True)
t = time.time()
for _epoch in range(epochs):
    for batch in loader:
        opt.zero_grad()
        loss = loss_fn(net(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
    sched.step()
report["unet_train_s"] = time.time() - t
inf_cfg = ConfigParser()
inf_cfg.read_config(str(B / "configs/inference.json"))
for k, v in {**COMMON, "data_split": "test"}.items():
    inf_cfg[k] = v
pre = inf_cfg.get_parsed_content("preprocessing")
dice, hd = (
    DiceMetric(include_background=True, reduction="none"),
    HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none"),
)
net.eval()
for item in inf_cfg.get_parsed_content("datalist"):
    d = pre(dict(item))
    batch = list_data_collate([d])
    with torch.no_grad():
        batch["pred"] = torch.sigmoid(
            sliding_window_inference(batch["image"], (48, 48, 48), 1, net, overlap=0.25, mode="gaussian")
        )
    d = Invertd("pred", transform=pre, orig_keys="image")(decollate_batch(batch)[0])
    p, y = (d["pred"] >= 0.5).float()[None], d["label"][None].float()
    dice(p, y)
    hd(p, y)
dv, hv = dice.aggregate().mean(0), hd.aggregate().nanmean(0)
report["unet"] = {
    "dice_tc": float(dv[0]),
    "dice_wt": float(dv[1]),
    "dice_et": float(dv[2]),
    "dice": float(dv.mean()),
    "hd95_tc": float(hv[0]),
    "hd95_wt": float(hv[1]),
    "hd95_et": float(hv[2]),
}
print(json.dumps(report, indent=1), flush=True)
(out / "report.json").write_text(json.dumps(report, indent=1))
