# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Segmentation quality on a real image/mask folder: the MedSegDiff bundle against a plain MONAI U-Net at an equal
optimizer-iteration budget, with uncertainty-vs-error and calibration scores for the diffusion model.

Data: ``<data>/images/<id>.<ext>`` + ``<data>/masks/<id>.<ext>`` paired by file stem
(:func:`monai_diffseg.data.image_folder_datalist`), split train/val/test with a seed
(:func:`monai_diffseg.data.split_datalist`).

Both models are trained through the **bundle's own** ``train.json`` (``monai.bundle.ConfigWorkflow``), so they share
loading, augmentation, resolution, optimizer, LR schedule, batch size, validation schedule and iteration count:

- ``medsegdiff``: the bundle as shipped, plus the overrides given on the command line;
- ``baseline``: the same ``train.json`` with ``network_def`` replaced by ``monai.networks.nets.UNet``, the loss by
  MONAI ``DiceCELoss(sigmoid=True)``, the inferers by ``SimpleInferer`` and the default prepare-batch.

The checkpoint with the best validation Dice (``model.pt``, the bundle's selection) is tested. Testing uses the
bundle's ``inference.json`` (preprocessing, network definition, DDIM sampler, steps, members, fusion); predictions
are resized back to each mask's original size, where Dice, IoU and HD95 (MONAI metrics; HD95 in pixels, an empty
prediction scores the image diagonal) and the expected calibration error of the fused probability (MONAI
``CalibrationErrorMetric``, 20 bins, per-case mean and pooled over all test pixels) are computed. At the network
resolution: GED^2 against the annotation and sample diversity (``monai_diffseg.metrics``), and per-case uncertainty
scores whose Spearman rank correlation with ``1 - Dice`` says how well uncertainty flags errors:

- ``entropy_fg`` (primary, fixed before any run): summed predictive entropy of the fused probability divided by the
  predicted foreground area (entropy per predicted-lesion pixel, i.e. relative boundary uncertainty);
- ``entropy_mean``: mean predictive entropy over the image;
- ``mutual_info_mean``: mean mutual information (epistemic part) over the image;
- ``diversity``: mean pairwise ``1 - IoU`` between ensemble members.

The baseline gets ``entropy_fg`` / ``entropy_mean`` of its sigmoid probability for comparison.

Run (from the repository root; one CPU thread unless ``--threads``)::

    python benchmarks/quality.py --data ../shared/data/ph2 --image-size 128 --iterations 600 \\
        --output runs/quality/ph2.json
    python benchmarks/quality.py --data ../shared/data/kvasir_seg --mask-threshold 127 --output runs/quality/kvasir.json
    python benchmarks/quality.py --data ../shared/data/ph2 --quick          # a few minutes on a CPU

Recipe options (``--prediction-type``, ``--aux-weight``, ``--network-config``, ``--noise-schedule``, ``--steps``,
``--members``, ``--fusion`` ...) override the bundle; ``--set KEY=JSON`` sets any other train/inference config item.
``--checkpoint PATH`` skips MedSegDiff training and only tests a trained model (e.g. to sweep steps/members/fusion).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "bundles" / "medsegdiff_isic2018"
MODELS = ("medsegdiff", "baseline")
UNCERTAINTY_SCORES = ("entropy_fg", "entropy_mean", "mutual_info_mean", "diversity")
PRIMARY_UNCERTAINTY = "entropy_fg"

__all__ = ["main", "parse_args", "run_quality"]


# ----------------------------------------------------------------------------------------------------------- config
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (paired by file stem)")
    p.add_argument("--image-dir", default="images", help="image sub-folder of --data")
    p.add_argument("--mask-dir", default="masks", help="mask sub-folder of --data")
    p.add_argument("--mask-suffix", default="", help="text between the image id and the mask extension")
    p.add_argument("--mask-threshold", type=float, default=None,
                   help="binarise masks as value > threshold (lossy JPEG masks, e.g. Kvasir-SEG: 127)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--max-test", type=int, default=None, help="test at most this many cases (first of the split)")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (configs/train.json, inference.json)")
    p.add_argument("--models", default="medsegdiff,baseline", help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--image-size", type=int, nargs="+", default=[128], help="network input size (one or two ints)")
    p.add_argument("--iterations", type=int, default=600, help="optimizer iterations per model (rounded up to whole "
                   "epochs and whole validation intervals; identical for both models)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the bundle's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the bundle's")
    p.add_argument("--num-validations", type=int, default=4, help="validations during training (model selection)")
    p.add_argument("--checkpoint-choice", choices=("best", "last"), default="best",
                   help="test the best-validation checkpoint (bundle's model.pt) or the final weights")
    # MedSegDiff recipe
    p.add_argument("--network-config", default=None,
                   help="MEDSEGDIFF_CONFIGS name (tiny/small/base) or a JSON dict of MedSegDiff arguments; "
                        "default: the bundle's network_def")
    p.add_argument("--prediction-type", default=None, choices=("epsilon", "sample", "v_prediction"))
    p.add_argument("--aux-weight", type=float, default=None)
    p.add_argument("--noise-schedule", default=None, help="e.g. scaled_linear_beta, linear_beta, sigmoid_beta, cosine")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps at test time (default: the bundle's)")
    p.add_argument("--members", type=int, default=None, help="ensemble size at test time (default: the bundle's)")
    p.add_argument("--fusion", default=None, help="ensemble fusion at test time (default: the bundle's)")
    p.add_argument("--sampler-seed", type=int, default=None, help="default: the bundle's seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="extra override of the MedSegDiff train and inference configs, e.g. network_def#dropout=0.1")
    p.add_argument("--checkpoint", default=None, help="test this MedSegDiff checkpoint instead of training one")
    # baseline
    p.add_argument("--baseline-channels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--baseline-strides", type=int, nargs="+", default=None, help="default: 2 per down level")
    p.add_argument("--baseline-res-units", type=int, default=2)
    # run
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader workers")
    p.add_argument("--device", default=None, help="default: cuda:0 when available, else cpu")
    p.add_argument("--work-dir", default=None, help="checkpoints and logs (default: runs/quality/<data>_<time>)")
    p.add_argument("--output", default=None, help="JSON report (default: <work-dir>/report.json)")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute CPU run: 40 iterations, 2 validations, 5 steps, 3 members, <= 16 test cases")
    p.add_argument("--quiet", action="store_true", help="no per-iteration training log lines")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations = min(args.iterations, 40)
        args.num_validations = min(args.num_validations, 2)
        args.steps = args.steps or 5
        args.members = args.members or 3
        args.max_test = min(args.max_test or 16, 16)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model '{m}' in --models; choose from {MODELS}.")
    if len(args.image_size) == 1:
        args.image_size = [args.image_size[0]] * 2
    return args


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=JSON, got '{item}'.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # plain string
    return out


def _network_def(base: dict[str, Any], spec: str | None) -> dict[str, Any]:
    """The bundle's ``network_def`` with a named configuration or a JSON dict applied."""
    from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS

    net = copy.deepcopy(base)
    if spec is None:
        return net
    if spec in MEDSEGDIFF_CONFIGS:
        for key in ("channels", "cond_channels", "num_res_blocks", "attention_levels"):
            net.pop(key, None)
        net.update({k: list(v) if isinstance(v, tuple) else v for k, v in MEDSEGDIFF_CONFIGS[spec].items()})
    else:
        net.update(json.loads(spec))
    return net


def _load_config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _binary_mask_index(transforms: list[dict[str, Any]]) -> int:
    """Position of ``BinaryMaskd`` in a config's transform list (to set its threshold)."""
    for i, t in enumerate(transforms):
        if isinstance(t, dict) and str(t.get("_target_", "")).endswith("BinaryMaskd"):
            return i
    raise ValueError("the bundle's transforms have no BinaryMaskd to pass --mask-threshold to.")


def _epochs_plan(num_train: int, batch_size: int, iterations: int, num_validations: int) -> dict[str, int]:
    """Whole epochs (drop_last loader) covering ``iterations``, rounded up to whole validation intervals."""
    per_epoch = num_train // batch_size
    if per_epoch < 1:
        raise ValueError(f"{num_train} training cases are fewer than one batch of {batch_size}; lower --batch-size.")
    epochs = max(1, math.ceil(iterations / per_epoch))
    val_interval = max(1, math.ceil(epochs / max(1, num_validations)))
    epochs = val_interval * math.ceil(epochs / val_interval)
    return {"epochs": epochs, "iterations_per_epoch": per_epoch, "iterations": epochs * per_epoch,
            "val_interval": val_interval}


# ------------------------------------------------------------------------------------------------------- training
def _train(
    name: str,
    bundle: Path,
    overrides: dict[str, Any],
    work_dir: Path,
) -> dict[str, Any]:
    """Run the bundle's train.json with ``overrides``; return wall time, iterations, checkpoint paths."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    root = work_dir / name
    root.mkdir(parents=True, exist_ok=True)
    wf = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf") if (configs / "logging.conf").is_file() else None,
        workflow_type="train",
        bundle_root=str(root),
        **overrides,
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    params = sum(p.numel() for p in network.parameters())
    start = time.perf_counter()
    wf.run()
    wall = time.perf_counter() - start
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    last = root / "models" / "model_last.pt"
    torch.save(network.state_dict(), last)
    info = {
        "train_wall_s": round(wall, 1),
        "iterations": int(trainer.state.iteration),
        "epochs": int(trainer.state.epoch),
        "parameters": int(params),
        "best_val_dice": float(evaluator.state.best_metric) if evaluator.state.best_metric_epoch > 0 else None,
        "best_val_epoch": int(evaluator.state.best_metric_epoch),
        "best_checkpoint": str(root / "models" / "model.pt"),
        "last_checkpoint": str(last),
        "final_train_loss": float(trainer.state.output[0]["loss"]) if isinstance(trainer.state.output, list)
        else float(trainer.state.output["loss"]),
    }
    wf.finalize()
    return info


def _baseline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Turn the MedSegDiff train.json into a plain supervised U-Net with Dice+CE loss."""
    levels = len(args.baseline_channels)
    strides = args.baseline_strides or [2] * (levels - 1)
    return {
        "network_def": {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": "@num_classes",
            "channels": list(args.baseline_channels),
            "strides": list(strides),
            "num_res_units": args.baseline_res_units,
        },
        "loss": {"_target_": "DiceCELoss", "sigmoid": True},
        "train#inferer": {"_target_": "SimpleInferer"},
        "train#prepare_batch": "$monai.engines.default_prepare_batch",
        "validate#inferer": {"_target_": "SimpleInferer"},
        "validate#postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            ],
        },
    }


# -------------------------------------------------------------------------------------------------------- testing
def _entropy(p: torch.Tensor) -> torch.Tensor:
    from monai_diffseg.transforms import binary_entropy

    return binary_entropy(p.float())


def _case_metrics(prob_net: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
    """Dice, IoU, HD95 and ECE at the mask's original size for one case; ``prob_net``: ``(1, h, w)``."""
    from monai.metrics import CalibrationErrorMetric, compute_dice, compute_hausdorff_distance, compute_iou
    from monai.metrics.calibration import calibration_binning

    prob = F.interpolate(prob_net[None].float(), size=tuple(label.shape[1:]), mode="bilinear", align_corners=False)
    prob = prob.clamp(0.0, 1.0)
    y = (label[None] > 0.5).float()
    pred = (prob >= 0.5).float()
    dice = float(compute_dice(pred, y, include_background=True, ignore_empty=False)[0, 0])
    iou = float(compute_iou(pred, y, include_background=True, ignore_empty=False)[0, 0])
    diag = float(math.hypot(*label.shape[1:]))
    if pred.sum() == 0 or y.sum() == 0:
        hd95 = 0.0 if pred.sum() == y.sum() else diag
    else:
        hd95 = float(compute_hausdorff_distance(pred, y, include_background=True, percentile=95)[0, 0])
        hd95 = hd95 if math.isfinite(hd95) else diag
    ece = float(CalibrationErrorMetric(num_bins=20)(y_pred=prob, y=y)[0, 0])
    mean_p, mean_gt, counts = calibration_binning(prob, y, num_bins=20)
    return {
        "dice": dice, "iou": iou, "hd95": hd95, "ece": ece, "empty_prediction": bool(pred.sum() == 0),
        "_bins": (torch.nan_to_num(mean_p[0, 0]) * counts[0, 0], torch.nan_to_num(mean_gt[0, 0]) * counts[0, 0],
                  counts[0, 0]),
    }


def _pooled_ece(bins: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    sum_p = torch.stack([b[0] for b in bins]).sum(0)
    sum_gt = torch.stack([b[1] for b in bins]).sum(0)
    counts = torch.stack([b[2] for b in bins]).sum(0)
    keep = counts > 0
    return float(((sum_p[keep] - sum_gt[keep]).abs()).sum() / counts.sum())


def _spearman(unc: list[float], err: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(unc) < 3 or np.ptp(unc) == 0 or np.ptp(err) == 0:
        return None
    rho = spearmanr(unc, err).statistic
    return float(rho) if np.isfinite(rho) else None


def _flag_summary(cases: list[dict[str, Any]], score: str) -> dict[str, Any]:
    """Spearman(score, 1 - Dice) and mean Dice of the most / least uncertain quarter of the cases."""
    unc = [c[score] for c in cases]
    err = [1.0 - c["dice"] for c in cases]
    order = np.argsort(unc)
    q = max(1, len(cases) // 4)
    dice = np.array([c["dice"] for c in cases])
    return {
        "spearman": _spearman(unc, err),
        "dice_least_uncertain_quarter": float(dice[order[:q]].mean()),
        "dice_most_uncertain_quarter": float(dice[order[-q:]].mean()),
    }


def _summarise(cases: list[dict[str, Any]], bins: list, scores: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cases": len(cases)}
    for key in ("dice", "iou", "hd95", "ece", "ged", "ged_sqrt", "diversity", "diversity_l2", "anchor_dice"):
        vals = [c[key] for c in cases if key in c]
        if vals:
            out[key] = float(np.mean(vals))
            if key in ("dice", "iou", "hd95"):
                out[f"{key}_std"] = float(np.std(vals))
                out[f"{key}_median"] = float(np.median(vals))
    out["ece_pooled"] = _pooled_ece(bins)
    out["empty_predictions"] = int(sum(c["empty_prediction"] for c in cases))
    out["uncertainty"] = {s: _flag_summary(cases, s) for s in scores}
    out["spearman_primary"] = out["uncertainty"][PRIMARY_UNCERTAINTY]["spearman"]
    return out


def _inference_parser(bundle: Path, overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(overrides)
    return parser


@torch.no_grad()
def _test(
    model: str,
    parser,
    checkpoint: str,
    test_list: list[dict[str, str]],
    network=None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Test one model on ``test_list`` with the inference config's preprocessing (and, for MedSegDiff, inferer)."""
    from monai.data import Dataset
    from monai.inferers import SimpleInferer
    from monai.utils import convert_to_tensor
    from monai_diffseg.metrics import compute_generalized_energy_distance, compute_sample_diversity
    from monai_diffseg.transforms import EnsembleFusiond, MutualInformation

    device = parser.get_parsed_content("device")
    preprocessing = parser.get_parsed_content("preprocessing")
    if network is None:
        network = parser.get_parsed_content("network")
    network = network.to(device)
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    network.load_state_dict(state)
    network.eval()
    diffusion = model == "medsegdiff"
    if diffusion:
        inferer = parser.get_parsed_content("inferer")
        inferer.return_samples = True
        fusion = EnsembleFusiond(keys="samples", method=parser.get_parsed_content("fusion"), guide_key="image")
    else:
        inferer = SimpleInferer()
    dataset = Dataset(test_list, transform=preprocessing)
    cases: list[dict[str, Any]] = []
    bins: list = []
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        image = torch.stack([convert_to_tensor(d["image"], track_meta=False) for d in items]).to(device)
        if diffusion:
            samples = inferer(image, network).float().cpu()  # (N, E, 1, h, w)
            anchor = torch.sigmoid(network.anchor(network.encode_condition(image))).float().cpu() \
                if getattr(network, "anchor_head", None) is not None else None
        else:
            probs = torch.sigmoid(inferer(image, network).float()).cpu()  # (N, 1, h, w)
        for i, d in enumerate(items):
            label = convert_to_tensor(d["label"], track_meta=False).float().cpu()
            label_net = (convert_to_tensor(d["label_net"], track_meta=False).float().cpu() > 0.5).float()
            case = {"case": test_list[first + i].get("case", str(first + i))}
            if diffusion:
                s = samples[i]
                guide = convert_to_tensor(d["image"], track_meta=False)
                fused = torch.as_tensor(fusion({"samples": s, "image": guide})["samples"]).float()
                hard = (s >= 0.5).float()
                ged = compute_generalized_energy_distance(hard[None], label_net[None, None])
                case.update({
                    "ged": float(ged["ged"][0]), "ged_sqrt": float(ged["ged_sqrt"][0]),
                    "diversity": float(compute_sample_diversity(hard[None], distance="1-iou")[0]),
                    "diversity_l2": float(compute_sample_diversity(s[None], distance="l2")[0]),
                    "mutual_info_mean": float(torch.as_tensor(MutualInformation()(s)).mean()),
                })
                prob_net = fused
            else:
                prob_net = probs[i]
            ent = _entropy(prob_net)
            fg = float((prob_net >= 0.5).sum())
            case["entropy_mean"] = float(ent.mean())
            case["entropy_fg"] = float(ent.sum()) / max(fg, 1.0)
            m = _case_metrics(prob_net, label)
            bins.append(m.pop("_bins"))
            case.update(m)
            if diffusion and anchor is not None:
                case["anchor_dice"] = _case_metrics(anchor[i], label)["dice"]
            cases.append(case)
    wall = time.perf_counter() - start
    scores = UNCERTAINTY_SCORES if diffusion else ("entropy_fg", "entropy_mean")
    summary = _summarise(cases, bins, scores)
    summary["test_wall_s"] = round(wall, 1)
    summary["test_s_per_case"] = round(wall / max(1, len(cases)), 3)
    return {"summary": summary, "cases": cases}


# ----------------------------------------------------------------------------------------------------------- main
def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch thread(s)), "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}")


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    """Split, train both models through the bundle, test them; return the report dict."""
    from monai_diffseg.data import image_folder_datalist, split_datalist

    torch.set_num_threads(max(1, args.threads))
    bundle = Path(args.bundle).resolve()
    data = Path(args.data).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = Path(args.work_dir or ROOT / "runs" / "quality" / f"{data.name}_{stamp}").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output) if args.output else work_dir / "report.json"

    datalist = image_folder_datalist(data / args.image_dir, data / args.mask_dir, mask_suffix=args.mask_suffix)
    train, val, test = split_datalist(datalist, tuple(args.fractions), seed=args.split_seed)
    if args.max_test is not None:
        test = test[: args.max_test]

    train_cfg = _load_config(bundle / "configs" / "train.json")
    infer_cfg = _load_config(bundle / "configs" / "inference.json")
    batch_size = args.batch_size or int(train_cfg["batch_size"])
    plan = _epochs_plan(len(train), batch_size, args.iterations, args.num_validations)
    device = torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))

    # overrides shared by both models (the training recipe that must be equal)
    common: dict[str, Any] = {
        "datalists": (train, val),
        "image_size": list(args.image_size),
        "batch_size": batch_size,
        "num_epochs": plan["epochs"],
        "val_interval": plan["val_interval"],
        "num_workers": args.num_workers,
        "resume": False,
        "device": f"$torch.device('{device}')",
    }
    if args.learning_rate is not None:
        common["learning_rate"] = args.learning_rate
    if args.quiet:
        for i, h in enumerate(train_cfg["train"]["handlers"]):
            if h.get("_target_") == "StatsHandler":
                common[f"train#handlers#{i}#iteration_log"] = False
    if args.mask_threshold is not None:
        common[f"load_transforms#{_binary_mask_index(train_cfg['load_transforms'])}#threshold"] = args.mask_threshold

    # MedSegDiff recipe
    network_def = _network_def(train_cfg["network_def"], args.network_config)
    recipe: dict[str, Any] = {"network_def": network_def}
    for key, value in (("prediction_type", args.prediction_type), ("aux_weight", args.aux_weight),
                       ("noise_schedule", args.noise_schedule)):
        if value is not None:
            recipe[key] = value
    extra = _parse_sets(args.set)
    msd_train = {**common, **recipe, **extra}
    infer_over: dict[str, Any] = {
        "network_def": network_def,
        "image_size": list(args.image_size),
        "num_workers": args.num_workers,
        "device": f"$torch.device('{device}')",
        "labels": True,
    }
    for key in ("prediction_type", "noise_schedule"):
        if key in recipe:
            infer_over[key] = recipe[key]
    for key, value in (("num_inference_steps", args.steps), ("num_samples", args.members),
                       ("fusion", args.fusion), ("seed", args.sampler_seed)):
        if value is not None:
            infer_over[key] = value
    if args.mask_threshold is not None:
        index = _binary_mask_index(infer_cfg["preprocessing"]["transforms"])
        infer_over[f"preprocessing#transforms#{index}#threshold"] = args.mask_threshold
    infer_over.update({k: v for k, v in extra.items() if k in infer_cfg or k.split("#")[0] in infer_cfg})

    report: dict[str, Any] = {
        "command": getattr(args, "_argv", None) or "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "data": str(data),
        "split": {"seed": args.split_seed, "fractions": list(args.fractions), "train": len(train), "val": len(val),
                  "test": len(test), "test_cases": [d["case"] for d in test]},
        "image_size": list(args.image_size),
        "batch_size": batch_size,
        "budget": plan,
        "machine": _machine(device),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bundle": str(bundle),
        "bundle_config_sha256": {
            name: hashlib.sha256((bundle / "configs" / name).read_bytes()).hexdigest()[:16]
            for name in ("train.json", "inference.json")
        },
        "medsegdiff_overrides": {k: v for k, v in {**recipe, **extra}.items()},
        "medsegdiff_inference_overrides": {k: v for k, v in infer_over.items() if k not in ("device",)},
        "models": {},
    }

    for model in args.models:
        print(f"\n=== {model}: {plan['iterations']} iterations ({plan['epochs']} epochs x "
              f"{plan['iterations_per_epoch']}), {len(train)}/{len(val)}/{len(test)} train/val/test ===", flush=True)
        entry: dict[str, Any] = {}
        if model == "medsegdiff":
            if args.checkpoint:
                ckpt = args.checkpoint
                entry["train"] = {"checkpoint": ckpt, "note": "not trained in this run"}
            else:
                entry["train"] = _train(model, bundle, msd_train, work_dir)
                ckpt = entry["train"][f"{args.checkpoint_choice}_checkpoint"]
            if not os.path.isfile(ckpt):
                ckpt = entry["train"]["last_checkpoint"]
            parser = _inference_parser(bundle, infer_over)
            result = _test(model, parser, ckpt, test)
            result["summary"]["steps"] = int(parser.get_parsed_content("num_inference_steps"))
            result["summary"]["members"] = int(parser.get_parsed_content("num_samples"))
            result["summary"]["fusion"] = str(parser.get_parsed_content("fusion"))
        else:
            base_over = {**common, **_baseline_overrides(args)}
            entry["train"] = _train(model, bundle, base_over, work_dir)
            ckpt = entry["train"][f"{args.checkpoint_choice}_checkpoint"]
            if not os.path.isfile(ckpt):
                ckpt = entry["train"]["last_checkpoint"]
            from monai.bundle import ConfigParser

            net_parser = ConfigParser({"num_classes": 1, "network_def": base_over["network_def"]})
            parser = _inference_parser(bundle, {k: v for k, v in infer_over.items() if k != "network_def"})
            result = _test(model, parser, ckpt, test, network=net_parser.get_parsed_content("network_def"))
        entry["checkpoint"] = ckpt
        entry.update(result)
        report["models"][model] = entry
        _write(report, output)
    print_table(report)
    print(f"\nreport: {output}")
    return report


def _write(report: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, output)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(report: dict[str, Any]) -> None:
    """Side-by-side summary of the models in ``report``."""
    rows = [("test Dice", "dice"), ("Dice std", "dice_std"), ("test IoU", "iou"), ("HD95 (px)", "hd95"),
            ("ECE (per case)", "ece"), ("ECE (pooled)", "ece_pooled"), ("empty predictions", "empty_predictions"),
            ("GED^2", "ged"), ("diversity (1-IoU)", "diversity"), ("anchor-head Dice", "anchor_dice"),
            (f"Spearman({PRIMARY_UNCERTAINTY}, 1-Dice)", "spearman_primary"), ("test s/case", "test_s_per_case")]
    models = list(report["models"])
    print(f"\n{report['data']} | split seed {report['split']['seed']} "
          f"({report['split']['train']}/{report['split']['val']}/{report['split']['test']}) | "
          f"{report['image_size'][0]}x{report['image_size'][1]} | {report['budget']['iterations']} iterations")
    print(f"{'':<34}" + "".join(f"{m:>14}" for m in models))
    for label, key in rows:
        print(f"{label:<34}" + "".join(f"{_fmt(report['models'][m]['summary'].get(key)):>14}" for m in models))
    print(f"{'train wall (s)':<34}" + "".join(
        f"{_fmt(report['models'][m]['train'].get('train_wall_s')):>14}" for m in models))
    print(f"{'parameters (M)':<34}" + "".join(
        f"{_fmt((report['models'][m]['train'].get('parameters') or 0) / 1e6, 2):>14}" for m in models))
    if "medsegdiff" in report["models"]:
        unc = report["models"]["medsegdiff"]["summary"]["uncertainty"]
        print("\nMedSegDiff uncertainty vs error (Spearman with 1 - Dice; Dice of least / most uncertain quarter):")
        for score, v in unc.items():
            print(f"  {score:<18}{_fmt(v['spearman']):>8}   {_fmt(v['dice_least_uncertain_quarter'])} / "
                  f"{_fmt(v['dice_most_uncertain_quarter'])}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the report."""
    args = parse_args(argv)
    args._argv = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                      else sys.argv[1:]))
    return run_quality(args)


if __name__ == "__main__":
    main()
