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

The checkpoint with the best validation Dice (``model.pt``, the bundle's selection) is tested **through the bundle's
own** ``inference.json`` (``ConfigWorkflow``: its checkpoint loader, preprocessing, sampler, steps, members, fusion,
``Invertd`` back to each image's original size and its writers), with top-level overrides only (``datalist``,
``output_dir``, ``ckpt_path``, ``image_size``, ``num_samples``, ``num_inference_steps``, ``fusion``, ``network_def``);
the baseline runs the same path with its network, a sigmoid inferer returning a one-member ensemble and
``fusion="mean"``. Scores are read from what the bundle wrote: Dice and IoU per case, GED^2 against the annotation
and sample diversity (network resolution) from its ``metrics.json``; HD95 (MONAI, pixels; an empty prediction scores
the image diagonal) from ``<case>_mask.png`` and the expected calibration error (MONAI ``CalibrationErrorMetric``,
20 bins, per-case mean and pooled over all test pixels) from ``<case>_prob.png``, against the original masks. The
anchor head's Dice (the condition branch alone), which the bundle does not output, is the one direct network call.
Per-case uncertainty scores whose Spearman rank correlation with ``1 - Dice`` says how well uncertainty flags errors:

- ``ensemble_dice_error`` (primary since issue 16; the bundle's ``ShiftScore``): mean ``1 - Dice`` of each member's
  and the anchor head's mask against the fused mask, the ensemble's own estimate of its error;
- ``entropy_fg`` (primary until issue 16, fixed before the first run): summed predictive entropy of the fused
  probability divided by the predicted foreground area (entropy per predicted-lesion pixel, i.e. relative boundary
  uncertainty);
- ``entropy_mean``: mean predictive entropy over the image;
- ``mutual_info_mean``: mean mutual information (epistemic part) over the image (the bundle's written map);
- ``diversity``: mean pairwise ``1 - IoU`` between ensemble members;
- ``anchor_disagreement``: ``1 - Dice`` of the anchor head against the fused mask (``ShiftScore``).

The baseline gets ``entropy_fg`` (its primary) / ``entropy_mean`` of its sigmoid probability for comparison.

Run (from the repository root; one CPU thread unless ``--threads``)::

    python benchmarks/quality.py --data ../shared/data/ph2 --image-size 128 --iterations 600 \\
        --output runs/quality/ph2.json
    python benchmarks/quality.py --data ../shared/data/kvasir_seg --mask-threshold 127 --output runs/quality/kvasir.json
    python benchmarks/quality.py --data ../shared/data/ph2 --quick          # a few minutes on a CPU

Task bundles (their data-list builder, split and scores; every per-case score of the bundle's ``metrics.json`` is
summarised and compared per case, e.g. ``dice_cup`` / ``vcdr_error`` for fundus, ``ged`` against all raters)::

    python benchmarks/quality.py --bundle bundles/medsegdiff_fundus_disc_cup --data ../shared/data/drishti_gs \\
        --datalist monai_diffseg.data.drishti_gs_datalist --datalist-args '{"expert_threshold": 2}' \\
        --fractions 0.6 0.1 0.3 --image-size 128 --iterations 400
    python benchmarks/quality.py --bundle bundles/medsegdiff_thyroid_ddti --data ../shared/data/ddti \\
        --datalist monai_diffseg.data.ddti_datalist --group-regex '^(\\d+)_' --image-size 128 --iterations 500
    python benchmarks/quality.py --bundle bundles/medsegdiff_polyp --data ../shared/data/kvasir_seg \\
        --datalist monai_diffseg.data.polyp_datalist --datalist-args '{"dataset_format": "kvasir_seg"}'
    python benchmarks/quality.py --bundle bundles/medsegdiff_multirater --data ../shared/data/qubiq_brain_growth \\
        --datalist monai_diffseg.data.multirater_datalist --datalist-args '{"split": "test"}' \\
        --fractions 0.55 0.15 0.3 --batch-size 5 --image-size 128 --iterations 400

Recipe options (``--prediction-type``, ``--aux-weight``, ``--network-config``, ``--noise-schedule``, ``--steps``,
``--members``, ``--fusion`` ...) override the bundle; ``--set KEY=JSON`` sets any other train/inference config item.
``--checkpoint PATH`` skips MedSegDiff training and only tests a trained model (e.g. to sweep steps/members/fusion).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow
from monai.inferers import SimpleInferer
from monai.metrics import CalibrationErrorMetric, compute_dice, compute_hausdorff_distance
from monai.metrics.calibration import calibration_binning
from monai.transforms import LoadImage
from monai.utils import convert_to_tensor
from scipy.stats import spearmanr, wilcoxon

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_utils import machine_info, write_json  # noqa: E402

from monai_diffseg.data import image_folder_datalist, split_datalist  # noqa: E402
from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS  # noqa: E402
from monai_diffseg.transforms import display_range  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "bundles" / "medsegdiff_isic2018"
MODELS = ("medsegdiff", "baseline")
# label-free per-case scores of the ensemble tested as error flags (Spearman with 1 - Dice); ShiftScore's are kept
# only when the bundle writes them (a network with an anchor head)
UNCERTAINTY_SCORES = (
    "entropy_fg",
    "entropy_mean",
    "mutual_info_mean",
    "diversity",
    "anchor_disagreement",
    "ensemble_dice_error",
)
# the score each report names first (spearman_primary): the ensemble's own estimate of 1 - Dice (issue 16: the only one
# at Spearman >= 0.4 on all six PH2 / Kvasir-SEG checkpoints of docs/results.md); a U-Net has no ensemble: entropy_fg
PRIMARY_UNCERTAINTY = "ensemble_dice_error"
BASELINE_PRIMARY_UNCERTAINTY = "entropy_fg"

__all__ = ["main", "parse_args", "run_quality"]


# ----------------------------------------------------------------------------------------------------------- config
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (default layout: images/ + masks/ paired by stem)")
    p.add_argument(
        "--datalist",
        default=None,
        metavar="MODULE.FUNCTION",
        help="data-list builder called as FUNCTION(data, **--datalist-args), e.g. "
        "monai_diffseg.data.drishti_gs_datalist; default: image_folder_datalist(data/--image-dir, data/--mask-dir)",
    )
    p.add_argument("--datalist-args", default="{}", metavar="JSON", help="keyword arguments of --datalist")
    p.add_argument(
        "--group-regex",
        default=None,
        help="split by group, never by case: re.search on each case id, the first capture group (or the match) is "
        "the group, e.g. DDTI '^(\\d+)_' keeps the frames and nodule crops of one patient together",
    )
    p.add_argument("--image-dir", default="images", help="image sub-folder of --data")
    p.add_argument("--mask-dir", default="masks", help="mask sub-folder of --data")
    p.add_argument("--mask-suffix", default="", help="text between the image id and the mask extension")
    p.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="binarise masks as value > threshold (lossy JPEG masks, e.g. Kvasir-SEG: 127)",
    )
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--max-test", type=int, default=None, help="test at most this many cases (first of the split)")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (configs/train.json, inference.json)")
    p.add_argument("--models", default="medsegdiff,baseline", help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--image-size", type=int, nargs="+", default=[128], help="network input size (one or two ints)")
    p.add_argument(
        "--iterations",
        type=int,
        default=600,
        help="optimizer iterations per model (rounded up to whole "
        "epochs and whole validation intervals; identical for both models)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the bundle's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the bundle's")
    p.add_argument("--num-validations", type=int, default=4, help="validations during training (model selection)")
    p.add_argument(
        "--checkpoint-choice",
        choices=("best", "last"),
        default="best",
        help="test the best-validation checkpoint (bundle's model.pt) or the final weights",
    )
    # MedSegDiff recipe
    p.add_argument(
        "--network-config",
        default=None,
        help="MEDSEGDIFF_CONFIGS name (tiny/small/base) or a JSON dict of MedSegDiff arguments; "
        "default: the bundle's network_def",
    )
    p.add_argument("--prediction-type", default=None, choices=("epsilon", "sample", "v_prediction"))
    p.add_argument("--aux-weight", type=float, default=None)
    p.add_argument("--noise-schedule", default=None, help="e.g. scaled_linear_beta, linear_beta, sigmoid_beta, cosine")
    p.add_argument(
        "--self-condition",
        action="store_true",
        help="MedSegDiff(self_condition=True): train with the previous x0 estimate as input (Analog Bits)",
    )
    p.add_argument(
        "--loss-weighting",
        default=None,
        choices=("none", "min_snr"),
        help="per-timestep diffusion-loss weighting of MaskDiffusionPrepareBatch (min_snr: Hang et al. 2023, gamma 5)",
    )
    p.add_argument("--steps", type=int, default=None, help="DDIM steps at test time (default: the bundle's)")
    p.add_argument("--members", type=int, default=None, help="ensemble size at test time (default: the bundle's)")
    p.add_argument("--fusion", default=None, help="ensemble fusion at test time (default: the bundle's)")
    p.add_argument("--sampler-seed", type=int, default=None, help="default: the bundle's seed")
    p.add_argument(
        "--init",
        default=None,
        choices=("noise", "anchor"),
        help="where the ensemble members start (DiffusionSegmentationInferer init): pure noise, or the anchor head's "
        "mask noised to --t-start (SDEdit); default: the bundle's",
    )
    p.add_argument("--t-start", type=int, default=None, help="training timestep of the anchor start (--init anchor)")
    p.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="anchor head as a prior in fusion: members become (1 - w) p_e + w p_anchor; 1 with --fusion mean scores "
        "the anchor alone through the bundle's path; default: the bundle's",
    )
    p.add_argument(
        "--pair-with",
        action="append",
        default=[],
        metavar="REPORT.json:MODEL",
        help="also compare this run's MedSegDiff per case (same test cases) with MODEL (medsegdiff or baseline) of an "
        "earlier report, e.g. the default sampler or the U-Net of the run that trained the checkpoint",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra override of the MedSegDiff train and inference configs, e.g. network_def#dropout=0.1",
    )
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
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few-minute CPU run: 40 iterations, 2 validations, 5 steps, 3 members, <= 16 test cases",
    )
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


def _build_datalist(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """The data list of ``--data``: ``--datalist(data, **--datalist-args)`` or the flat images/ + masks/ folder."""
    if args.datalist is None:
        return image_folder_datalist(data / args.image_dir, data / args.mask_dir, mask_suffix=args.mask_suffix)
    module, _, name = args.datalist.rpartition(".")
    if not module:
        raise ValueError(f"--datalist must be MODULE.FUNCTION, got '{args.datalist}'.")
    builder = getattr(importlib.import_module(module), name)
    return list(builder(str(data), **json.loads(args.datalist_args)))


def _load_config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _target_ids(config: Any, target: str, prefix: str = "") -> list[str]:
    """Config ids (``a#0#b``) of every component whose ``_target_`` ends with ``target``, wherever it sits."""
    if isinstance(config, dict):
        found = [prefix[:-1]] if str(config.get("_target_", "")).endswith(target) else []
        items = config.items()
    elif isinstance(config, list):
        found, items = [], enumerate(config)
    else:
        return []
    return found + [i for k, v in items for i in _target_ids(v, target, f"{prefix}{k}#")]


def _mask_threshold_overrides(config: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """``--mask-threshold`` as overrides of every ``BinaryMaskd`` of a bundle config."""
    if threshold is None:
        return {}
    ids = _target_ids(config, "BinaryMaskd")
    if not ids:
        raise ValueError("the bundle's config has no BinaryMaskd to pass --mask-threshold to.")
    return {f"{i}#threshold": threshold for i in ids}


def _workflow(bundle: Path, config: str, workflow_type: str, root: Path, **overrides: Any) -> Any:
    """The bundle's ``config`` as an initialised ``monai.bundle.ConfigWorkflow`` rooted at ``root``."""
    configs = bundle / "configs"
    root.mkdir(parents=True, exist_ok=True)
    wf = ConfigWorkflow(
        config_file=str(configs / config),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf") if (configs / "logging.conf").is_file() else None,
        workflow_type=workflow_type,
        bundle_root=str(root),
        **overrides,
    )
    wf.initialize()
    return wf


def _epochs_plan(num_train: int, batch_size: int, iterations: int, num_validations: int) -> dict[str, int]:
    """Whole epochs (drop_last loader) covering ``iterations``, rounded up to whole validation intervals."""
    per_epoch = num_train // batch_size
    if per_epoch < 1:
        raise ValueError(f"{num_train} training cases are fewer than one batch of {batch_size}; lower --batch-size.")
    epochs = max(1, math.ceil(iterations / per_epoch))
    val_interval = max(1, math.ceil(epochs / max(1, num_validations)))
    epochs = val_interval * math.ceil(epochs / val_interval)
    return {
        "epochs": epochs,
        "iterations_per_epoch": per_epoch,
        "iterations": epochs * per_epoch,
        "val_interval": val_interval,
    }


# ------------------------------------------------------------------------------------------------------- training
def _train(
    name: str,
    bundle: Path,
    overrides: dict[str, Any],
    work_dir: Path,
) -> dict[str, Any]:
    """Run the bundle's train.json with ``overrides``; return wall time, iterations, checkpoint paths."""
    root = work_dir / name
    wf = _workflow(bundle, "train.json", "train", root, **overrides)
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
        "final_train_loss": float(trainer.state.output[0]["loss"])
        if isinstance(trainer.state.output, list)
        else float(trainer.state.output["loss"]),
    }
    wf.finalize()
    return info


def _baseline_overrides(args: argparse.Namespace, in_channels: Any = 3, num_classes: int = 1) -> dict[str, Any]:
    """Turn the MedSegDiff train.json into a plain supervised U-Net with Dice + binary cross-entropy loss (sigmoid per
    channel: binary and multi-label masks); ``in_channels``: the bundle's (a number or a config reference)."""
    levels = len(args.baseline_channels)
    strides = args.baseline_strides or [2] * (levels - 1)
    return {
        "network_def": {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 2,
            "in_channels": in_channels,
            "out_channels": "@num_classes",
            "channels": list(args.baseline_channels),
            "strides": list(strides),
            "num_res_units": args.baseline_res_units,
        },
        # Dice + binary cross-entropy per channel: MONAI's DiceCELoss switches to softmax cross-entropy for more
        # than one channel, wrong for multi-label masks (nested disc/cup), so those get DiceFocalLoss(gamma=0)
        "loss": {"_target_": "DiceCELoss", "sigmoid": True}
        if num_classes == 1
        else {"_target_": "DiceFocalLoss", "sigmoid": True, "gamma": 0.0},
        "train#inferer": {"_target_": "SimpleInferer"},
        "train#prepare_batch": "$monai.engines.default_prepare_batch",
        # the bundle's MLflow parameters name MedSegDiff-only network keys (cond_channels); tracking is off here
        "mlflow_params": {},
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
class SigmoidMembersInferer(SimpleInferer):
    """The baseline's sigmoid probability as a one-member ensemble ``(N, 1, C, *S)``: the shape the bundle's
    diffusion inferer returns, so the baseline runs the bundle's own post-processing (with ``fusion="mean"`` the
    fusion of one member is that member)."""

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = super().__call__(inputs, network, *args, **kwargs)
        return torch.sigmoid(convert_to_tensor(logits, track_meta=False)).unsqueeze(1)


def _read_png(path: Path) -> torch.Tensor:
    """A written 8-bit map or mask as ``(1, *S)`` float in [0, 1], in MONAI's array orientation (as the label)."""
    if not path.is_file():
        raise FileNotFoundError(f"the bundle's inference did not write '{path}'; see its log above.")
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path)).as_tensor().float() / 255.0


def _file_metrics(pred: torch.Tensor, prob: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
    """HD95 (pixels; an empty prediction scores the image diagonal) and ECE (20 bins) at the original size."""
    y, pred = label[None], pred[None]
    diag = float(math.hypot(*label.shape[1:]))
    if pred.sum() == 0 or y.sum() == 0:
        hd95 = 0.0 if pred.sum() == y.sum() else diag
    else:
        hd95 = float(compute_hausdorff_distance(pred, y, include_background=True, percentile=95)[0, 0])
        hd95 = hd95 if math.isfinite(hd95) else diag
    ece = float(CalibrationErrorMetric(num_bins=20)(y_pred=prob[None], y=y)[0, 0])
    mean_p, mean_gt, counts = calibration_binning(prob[None], y, num_bins=20)
    bins = (torch.nan_to_num(mean_p[0, 0]) * counts[0, 0], torch.nan_to_num(mean_gt[0, 0]) * counts[0, 0], counts[0, 0])
    return {"hd95": hd95, "ece": ece, "empty_prediction": bool(pred.sum() == 0), "_bins": bins}


def _pooled_ece(bins: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    sum_p, sum_gt, counts = (torch.stack(parts).sum(0) for parts in zip(*bins))
    keep = counts > 0
    return float(((sum_p[keep] - sum_gt[keep]).abs()).sum() / counts.sum())


def _spearman(unc: list[float], err: list[float]) -> float | None:
    """Spearman's rho, ``None`` when undefined (fewer than 3 cases or a constant variable)."""
    if len(unc) < 3 or np.ptp(unc) == 0 or np.ptp(err) == 0:
        return None
    rho = spearmanr(unc, err).statistic
    return float(rho) if np.isfinite(rho) else None


def _flag_summary(cases: list[dict[str, Any]], score: str) -> dict[str, Any]:
    """Spearman(score, 1 - Dice) and mean Dice of the most / least uncertain quarter of the cases."""
    unc = [c[score] for c in cases]
    dice = np.array([c["dice"] if c.get("dice") is not None else np.nan for c in cases])
    order = np.argsort(unc)
    q = max(1, len(cases) // 4)
    return {
        "spearman": _spearman(unc, list(1.0 - dice)),
        "dice_least_uncertain_quarter": float(dice[order[:q]].mean()),
        "dice_most_uncertain_quarter": float(dice[order[-q:]].mean()),
    }


def _score_keys(cases: list[dict[str, Any]]) -> list[str]:
    """Numeric per-case score names, in first-seen order."""
    keys = dict.fromkeys(k for c in cases for k, v in c.items() if isinstance(v, (int, float)) and k != "case")
    return [k for k in keys if not isinstance(next(c[k] for c in cases if k in c), bool)]


def _summarise(cases: list[dict[str, Any]], bins: list, scores: tuple[str, ...], primary: str) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cases": len(cases)}
    for key in _score_keys(cases):
        vals = [c[key] for c in cases if c.get(key) is not None]
        if vals:
            out[key] = float(np.mean(vals))
            if key.startswith(("dice", "iou", "hd95")) or key.endswith("error"):
                out[f"{key}_std"] = float(np.std(vals))
                out[f"{key}_median"] = float(np.median(vals))
    if bins:
        out["ece_pooled"] = _pooled_ece(bins)
    if any("empty_prediction" in c for c in cases):
        out["empty_predictions"] = int(sum(c.get("empty_prediction", False) for c in cases))
    out["uncertainty"] = {s: _flag_summary(cases, s) for s in scores}
    out["primary_uncertainty"] = primary
    out["spearman_primary"] = out["uncertainty"].get(primary, {}).get("spearman")
    return out


def _report_cases(spec: str, test_cases: list[str]) -> list[dict[str, Any]]:
    """The per-case scores of ``MODEL`` in an earlier report, ``spec`` = ``"REPORT.json:MODEL"``; this run's test
    cases must be among its own (same data, split seed and fractions)."""
    path, sep, model = spec.rpartition(":")
    if not sep or model not in MODELS:
        raise ValueError(f"--pair-with expects REPORT.json:MODEL with MODEL in {MODELS}, got '{spec}'.")
    earlier = json.loads(Path(path).read_text())
    if not set(test_cases) <= set(earlier["split"]["test_cases"]):
        raise ValueError(
            f"--pair-with '{spec}': this run's test cases are not among its test cases; use the report of the same "
            "--data, --split-seed and --fractions (this run may test fewer, --max-test)."
        )
    if model not in earlier["models"]:
        raise ValueError(f"--pair-with '{spec}': the report has no '{model}' (it has {list(earlier['models'])}).")
    return earlier["models"][model]["cases"]


def _anchor_paired(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Fused ensemble vs its own anchor head, per case on Dice (both binarised at 0.5 and scored against the label at
    its original size): cases where the ensemble is better, ties, mean difference, Wilcoxon p."""
    pairs = [
        (c["dice"], c["anchor_dice"]) for c in cases if c.get("dice") is not None and c.get("anchor_dice") is not None
    ]
    if len(pairs) < 3:
        return None
    diff = np.array([a - b for a, b in pairs])
    return {
        "cases": len(pairs),
        "ours_better": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "mean_difference": float(diff.mean()),
        "wilcoxon_p": float(wilcoxon(diff).pvalue) if np.any(diff != 0) else None,
    }


def _lower_is_better(score: str) -> bool:
    return score.startswith(("hd95", "ece", "ged")) or score.endswith("error")


def _paired(ours: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-case paired comparison of MedSegDiff and the baseline on every score both have: cases where ours is
    better, ties, and the two-sided Wilcoxon signed-rank p-value (``None`` when all differences are zero)."""
    by_case = {c["case"]: c for c in base}
    out: dict[str, Any] = {}
    skip = {"entropy_fg", "entropy_mean", "ged_sqrt", "diversity", "diversity_l2", "anchor_dice"}
    for score in _score_keys(ours):
        if score in skip or score.startswith("sample_"):
            continue
        pairs = [
            (c[score], by_case[c["case"]][score])
            for c in ours
            if c.get(score) is not None and by_case.get(c["case"], {}).get(score) is not None
        ]
        if len(pairs) < 3:
            continue
        diff = np.array([a - b for a, b in pairs]) * (-1.0 if _lower_is_better(score) else 1.0)
        p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else None
        out[score] = {
            "cases": len(pairs),
            "ours_better": int((diff > 0).sum()),
            "ties": int((diff == 0).sum()),
            "wilcoxon_p": p,
            "lower_is_better": _lower_is_better(score),
        }
    return out


def _sampler_settings(inferer: Any) -> dict[str, Any]:
    """The diffusion inferer's start and anchor options and its network evaluations per member (``nfe``)."""
    init = getattr(inferer, "init", "noise")
    t_start = getattr(inferer, "t_start", None)
    scheduler = copy.deepcopy(inferer.scheduler)
    scheduler.set_timesteps(inferer.num_inference_steps)
    timesteps = scheduler.timesteps.tolist()
    nfe = max(1, len([t for t in timesteps if init != "anchor" or t <= t_start]))  # >= 1: one step from t_start
    return {"init": init, "t_start": t_start, "anchor_weight": getattr(inferer, "anchor_weight", 0.0), "nfe": nfe}


@torch.no_grad()
def _anchor_dice(network: Any, image: torch.Tensor, label: torch.Tensor) -> float:
    """Dice of the anchor head alone (the condition branch), resized to the label: a diagnostic the bundle does not
    output, hence the one direct network call here. ``image``: preprocessed ``(C, *S_net)``; ``label``: ``(1, *S)``."""
    device = next(network.parameters()).device
    logits = network.anchor(network.encode_condition(convert_to_tensor(image, track_meta=False)[None].to(device)))
    prob = F.interpolate(torch.sigmoid(logits).float().cpu(), size=tuple(label.shape[1:]), mode="bilinear")
    return float(compute_dice((prob >= 0.5).float(), label[None], ignore_empty=False)[0, 0])


def _test(
    model: str,
    bundle: Path,
    overrides: dict[str, Any],
    test_list: list[dict[str, str]],
    output_dir: Path,
) -> dict[str, Any]:
    """
    Run the bundle's ``inference.json`` (its checkpoint loader, sampler, fusion, ``Invertd`` and writers) on
    ``test_list`` through ``ConfigWorkflow``, then score the files it wrote against the labels of its own
    preprocessing: Dice/IoU and the ensemble scores from its ``metrics.json``; HD95, ECE and entropy from
    ``<case>_mask.png`` / ``<case>_prob.png``; ``mutual_info_mean`` from ``<case>_mutual_information.png``.
    """
    diffusion = model == "medsegdiff"
    wf = _workflow(
        bundle, "inference.json", "infer", output_dir, datalist=test_list, output_dir=str(output_dir), **overrides
    )
    start = time.perf_counter()
    wf.run()
    wall = time.perf_counter() - start
    get = wf.parser.get_parsed_content
    preprocessing, network = get("preprocessing"), get("network").eval()
    anchor = diffusion and getattr(network, "anchor_head", None) is not None
    written = json.loads((output_dir / "metrics.json").read_text())
    by_case = {c["case"]: c for c in written["cases"]}
    mi_high = display_range("mutual_information", int(get("num_classes")))[1]  # the written map's scale
    cases: list[dict[str, Any]] = []
    bins: list = []
    for item in test_list:
        name = item["case"]
        if name not in by_case:
            raise ValueError(
                f"case '{name}' is missing from '{output_dir / 'metrics.json'}' (failed: {written.get('failed')})."
            )
        scored = by_case[name]
        # every per-case score the bundle wrote (task scores such as dice_cup, vcdr_error, ged against all raters)
        case: dict[str, Any] = {"case": name}
        case.update({k: v for k, v in scored.items() if k != "case" and (v is None or isinstance(v, (int, float)))})
        for src, dst in (("sample_diversity", "diversity"), ("sample_diversity_l2", "diversity_l2")):
            if src in case:
                case[dst] = case.pop(src)
        pre = preprocessing(dict(item))
        label = convert_to_tensor(pre["label"], track_meta=False).float()  # original size, binarised by the bundle
        prob_file = output_dir / f"{name}_prob.png"
        # file scores for one-channel masks; multi-label bundles are scored per structure by their metrics.json
        single = label.shape[0] == 1 and prob_file.is_file()
        if single:
            prob = _read_png(prob_file)
            file_scores = _file_metrics((_read_png(output_dir / f"{name}_mask.png") > 0.5).float(), prob, label)
            bins.append(file_scores.pop("_bins"))
            case.update(file_scores)
            ent = torch.special.entr(prob) + torch.special.entr(1.0 - prob)
            case["entropy_mean"] = float(ent.mean())
            case["entropy_fg"] = float(ent.sum()) / max(float((prob >= 0.5).sum()), 1.0)
        if diffusion:
            ged = case.get("ged")
            case["ged_sqrt"] = None if ged is None else math.sqrt(max(ged, 0.0))
            mi_file = output_dir / f"{name}_mutual_information.png"
            if single and mi_file.is_file():
                case["mutual_info_mean"] = float(_read_png(mi_file).mean()) * mi_high
        if anchor and label.shape[0] == 1:
            case["anchor_dice"] = _anchor_dice(network, pre["image"], label)
        cases.append(case)
    settings = {k: get(k) for k in ("num_inference_steps", "num_samples", "fusion")}
    sampler = get("member_inferer" if wf.parser.get("member_inferer") is not None else "inferer") if diffusion else None
    wf.finalize()
    scores = UNCERTAINTY_SCORES if diffusion else ("entropy_fg", "entropy_mean")
    primary = PRIMARY_UNCERTAINTY if diffusion else BASELINE_PRIMARY_UNCERTAINTY
    summary = _summarise(cases, bins, tuple(s for s in scores if all(c.get(s) is not None for c in cases)), primary)
    summary["test_wall_s"] = round(wall, 1)
    summary["test_s_per_case"] = round(wall / max(1, len(cases)), 3)
    if diffusion:
        summary.update(
            steps=int(settings["num_inference_steps"]),
            members=int(settings["num_samples"]),
            fusion=str(settings["fusion"]),
            **_sampler_settings(sampler),
        )
        summary["paired_vs_anchor"] = _anchor_paired(cases)
    return {"summary": summary, "cases": cases}


# ----------------------------------------------------------------------------------------------------------- main
def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    """Split, train both models through the bundle, test them; return the report dict."""
    torch.set_num_threads(max(1, args.threads))
    bundle = Path(args.bundle).resolve()
    data = Path(args.data).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = Path(args.work_dir or ROOT / "runs" / "quality" / f"{data.name}_{stamp}").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output) if args.output else work_dir / "report.json"

    datalist = _build_datalist(args, data)
    split_kw = {"group_regex": args.group_regex} if args.group_regex else {}
    train, val, test = split_datalist(datalist, tuple(args.fractions), seed=args.split_seed, **split_kw)
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
        **_mask_threshold_overrides(train_cfg, args.mask_threshold),
    }
    if args.learning_rate is not None:
        common["learning_rate"] = args.learning_rate
    if args.quiet:
        common.update(
            {f"{i}#iteration_log": False for i in _target_ids(train_cfg, "StatsHandler") if i.startswith("train#")}
        )

    # MedSegDiff recipe
    network_def = _network_def(train_cfg["network_def"], args.network_config)
    if args.self_condition:
        network_def["self_condition"] = True
    recipe: dict[str, Any] = {"network_def": network_def}
    if args.loss_weighting is not None:
        recipe["train#prepare_batch#loss_weighting"] = args.loss_weighting
    for key, value in (
        ("prediction_type", args.prediction_type),
        ("aux_weight", args.aux_weight),
        ("noise_schedule", args.noise_schedule),
    ):
        if value is not None:
            recipe[key] = value
    extra = _parse_sets(args.set)
    msd_train = {**common, **recipe, **extra}
    # the same settings for the bundle's inference.json (those of its keys that it has), plus the test options
    infer_over: dict[str, Any] = {
        "image_size": list(args.image_size),
        "num_workers": args.num_workers,
        "device": f"$torch.device('{device}')",
        **_mask_threshold_overrides(infer_cfg, args.mask_threshold),
    }
    for key, value in (
        ("num_inference_steps", args.steps),
        ("num_samples", args.members),
        ("fusion", args.fusion),
        ("seed", args.sampler_seed),
    ):
        if value is not None:
            infer_over[key] = value
    infer_over.update({k: v for k, v in {**recipe, **extra}.items() if k.split("#")[0] in infer_cfg})
    # a bundle that wraps its diffusion inferer (e.g. a region-of-interest pass) names the inner one member_inferer
    inferer_key = "member_inferer" if "member_inferer" in infer_cfg else "inferer"
    for key, name, value in (
        ("init", "sampler_init", args.init),
        ("t_start", "t_start", args.t_start),
        ("anchor_weight", "anchor_weight", args.anchor_weight),
    ):
        if value is not None:  # the bundle's top-level key where it has one, else the inferer's argument
            infer_over[name if name in infer_cfg else f"{inferer_key}#{key}"] = value

    report: dict[str, Any] = {
        "command": getattr(args, "_argv", None) or "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "data": str(data),
        "split": {
            "seed": args.split_seed,
            "fractions": list(args.fractions),
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "test_cases": [d["case"] for d in test],
        },
        "image_size": list(args.image_size),
        "batch_size": batch_size,
        "budget": plan,
        "machine": ", ".join(f"{k}={v}" for k, v in machine_info(device).items()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bundle": str(bundle),
        "bundle_config_sha256": {
            name: hashlib.sha256((bundle / "configs" / name).read_bytes()).hexdigest()[:16]
            for name in ("train.json", "inference.json")
        },
        "medsegdiff_overrides": {**recipe, **extra},
        "medsegdiff_inference_overrides": {k: v for k, v in infer_over.items() if k != "device"},
        "models": {},
    }

    in_channels = train_cfg["network_def"].get("in_channels", 3)
    num_classes = int(train_cfg.get("num_classes", 1))
    for model in args.models:
        print(
            f"\n=== {model}: {plan['iterations']} iterations ({plan['epochs']} epochs x "
            f"{plan['iterations_per_epoch']}), {len(train)}/{len(val)}/{len(test)} train/val/test ===",
            flush=True,
        )
        if model == "medsegdiff" and args.checkpoint:
            entry: dict[str, Any] = {"train": {"checkpoint": args.checkpoint, "note": "not trained in this run"}}
            ckpt = args.checkpoint
        else:
            train_over = (
                msd_train
                if model == "medsegdiff"
                else {**common, **_baseline_overrides(args, in_channels, num_classes)}
            )
            entry = {"train": _train(model, bundle, train_over, work_dir)}
            ckpt = entry["train"][f"{args.checkpoint_choice}_checkpoint"]
            if not os.path.isfile(ckpt):  # no validation improved on the start: test the final weights
                ckpt = entry["train"]["last_checkpoint"]
        test_over = {**infer_over, "ckpt_path": ckpt}
        if model == "baseline":
            test_over.update(
                {
                    "network_def": _baseline_overrides(args, in_channels, num_classes)["network_def"],
                    inferer_key: SigmoidMembersInferer(),
                    "fusion": "mean",
                }
            )
        entry["checkpoint"] = ckpt
        entry.update(_test(model, bundle, test_over, test, work_dir / model / "inference"))
        report["models"][model] = entry
        write_json(str(output), report)
    if {"medsegdiff", "baseline"} <= set(report["models"]):
        report["paired"] = _paired(report["models"]["medsegdiff"]["cases"], report["models"]["baseline"]["cases"])
        write_json(str(output), report)
    if args.pair_with and "medsegdiff" in report["models"]:
        report["paired_with"] = {
            spec: _paired(report["models"]["medsegdiff"]["cases"], _report_cases(spec, report["split"]["test_cases"]))
            for spec in args.pair_with
        }
        write_json(str(output), report)
    print_table(report)
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_NOT_ROWS = {
    "num_cases",
    "test_wall_s",
    "steps",
    "members",
    "fusion",
    "uncertainty",
    "iou_std",
    "ged_sqrt",
    "init",
    "t_start",
    "anchor_weight",
    "nfe",
    "paired_vs_anchor",
    "primary_uncertainty",
}


def print_table(report: dict[str, Any]) -> None:
    """Side-by-side summary of the models in ``report``."""
    rows = [
        ("test Dice", "dice"),
        ("Dice std", "dice_std"),
        ("test IoU", "iou"),
        ("HD95 (px)", "hd95"),
        ("ECE (per case)", "ece"),
        ("ECE (pooled)", "ece_pooled"),
        ("empty predictions", "empty_predictions"),
        ("GED^2", "ged"),
        ("diversity (1-IoU)", "diversity"),
        ("anchor-head Dice", "anchor_dice"),
        ("Spearman(primary score, 1-Dice)", "spearman_primary"),
        ("test s/case", "test_s_per_case"),
    ]
    models = list(report["models"])
    print(
        f"\n{report['data']} | split seed {report['split']['seed']} "
        f"({report['split']['train']}/{report['split']['val']}/{report['split']['test']}) | "
        f"{report['image_size'][0]}x{report['image_size'][1]} | {report['budget']['iterations']} iterations"
    )
    print(f"{'':<34}" + "".join(f"{m:>14}" for m in models))
    shown = {key for _, key in rows}
    summaries = [report["models"][m]["summary"] for m in models]
    extra = [k for k in dict.fromkeys(k for s in summaries for k in s) if k not in shown and k not in _NOT_ROWS]
    extra = [k for k in extra if not k.endswith(("_median", "_std")) and isinstance(summaries[0].get(k, 0.0), float)]
    for label, key in rows + [(k, k) for k in extra]:
        if all(s.get(key) is None for s in summaries):
            continue
        print(f"{label:<34}" + "".join(f"{_fmt(s.get(key)):>14}" for s in summaries))
    print(
        f"{'train wall (s)':<34}"
        + "".join(f"{_fmt(report['models'][m]['train'].get('train_wall_s')):>14}" for m in models)
    )
    print(
        f"{'parameters (M)':<34}"
        + "".join(f"{_fmt((report['models'][m]['train'].get('parameters') or 0) / 1e6, 2):>14}" for m in models)
    )
    if report.get("paired"):
        print("\nPaired per case (MedSegDiff vs baseline): cases where MedSegDiff is better / ties / Wilcoxon p")
        for score, v in report["paired"].items():
            print(f"  {score:<24}{v['ours_better']:>5}/{v['cases']:<5}{v['ties']:>5}   p = {_fmt(v['wilcoxon_p'], 4)}")
    for label, paired in (report.get("paired_with") or {}).items():
        print(f"\nPaired per case (MedSegDiff vs {label}): better / ties / Wilcoxon p")
        for score, v in paired.items():
            print(f"  {score:<24}{v['ours_better']:>5}/{v['cases']:<5}{v['ties']:>5}   p = {_fmt(v['wilcoxon_p'], 4)}")
    msd = report["models"].get("medsegdiff", {}).get("summary", {})
    if msd.get("paired_vs_anchor"):
        v = msd["paired_vs_anchor"]
        print(
            f"\nFused ensemble vs its anchor head (Dice; init={msd.get('init')}, t_start={msd.get('t_start')}, "
            f"anchor_weight={msd.get('anchor_weight')}, {msd.get('nfe')} network evaluations per member): better in "
            f"{v['ours_better']}/{v['cases']}, mean difference {v['mean_difference']:+.4f}, p = {_fmt(v['wilcoxon_p'], 4)}"
        )
    if "medsegdiff" in report["models"] and report["models"]["medsegdiff"]["summary"]["uncertainty"]:
        unc = report["models"]["medsegdiff"]["summary"]["uncertainty"]
        print("\nMedSegDiff uncertainty vs error (Spearman with 1 - Dice; Dice of least / most uncertain quarter):")
        for score, v in unc.items():
            print(
                f"  {score:<18}{_fmt(v['spearman']):>8}   {_fmt(v['dice_least_uncertain_quarter'])} / "
                f"{_fmt(v['dice_most_uncertain_quarter'])}"
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the report."""
    args = parse_args(argv)
    args._argv = "python benchmarks/quality.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    return run_quality(args)


if __name__ == "__main__":
    main()
