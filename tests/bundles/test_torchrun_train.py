# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
``train.json`` + ``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on the CPU (gloo): both ranks end with
the same weights, the data is sharded (half the iterations of one process), only rank 0 writes checkpoints and
logs, and the model it wrote loads in ``inference.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow
from torchrun_utils import torchrun_bundle

from monai_diffseg.data import make_synthetic_isic2018, make_synthetic_kvasir_seg

# each rank writes into its own folders, so the test sees what rank 1 would have written into the shared ones
PER_RANK = {
    "ckpt_dir": "$@bundle_root + '/models_rank' + os.environ['RANK']",
    "output_dir": "$@bundle_root + '/eval_rank' + os.environ['RANK']",
}


def _scalar_events(folder: Path) -> int:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(
        len(e.summary.value) for f in folder.glob("events.out.tfevents.*") for e in EventFileLoader(str(f)).Load()
    )


def _train_with_torchrun(bundle: str, dataset: str, run: Path, **overrides) -> str:
    mgpu = json.loads((ROOT / "bundles" / bundle / "configs" / "multi_gpu_train.json").read_text())
    save_weights = (
        "$torch.save(monai_diffseg.utils.unwrap_network(@network).state_dict(), "
        "@bundle_root + '/weights_rank' + os.environ['RANK'] + '.pt')"
    )
    config = {
        **TINY_NETWORKS[bundle],
        **PER_RANK,
        "num_epochs": 1,
        "val_interval": 1,
        "val_num_inference_steps": 2,
        "val_num_samples": 2,
        "cache_rate": 0.0,
        **overrides,
        "finalize": [save_weights, *mgpu["finalize"]],  # each rank's final weights, then the config's own finalize
    }
    return torchrun_bundle(
        bundle, ["train.json", "multi_gpu_train.json"], config, run, dataset_dir=dataset, bundle_root=str(run)
    )


def _check_ranks(run: Path, iterations: int) -> dict[str, torch.Tensor]:
    w0 = torch.load(run / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(run / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), "the ranks' weights differ"
    # rank 0 alone writes the checkpoints and the shift statistics (ShiftStatisticsWriter)
    written = sorted(p.name for p in (run / "models_rank0").iterdir())
    assert written == ["checkpoint_last.pt", "model.pt", "shift_stats.pt"]
    assert list((run / "models_rank1").iterdir()) == [], "rank 1 wrote checkpoints"
    assert _scalar_events(run / "eval_rank0") > 0
    assert _scalar_events(run / "eval_rank1") == 0, "rank 1 logged to TensorBoard"
    last = torch.load(run / "models_rank0" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == iterations  # sharded: each rank saw half the cases
    assert not any(k.startswith("module.") for k in last["model"])  # DDP's prefix is not saved
    model = torch.load(run / "models_rank0" / "model.pt", weights_only=True)  # one epoch: the best is the last
    assert all(torch.equal(model[k], w0[k]) for k in w0)
    return w0


def _infer(bundle: str, dataset: str, run: Path, weights: dict[str, torch.Tensor], **overrides) -> Path:
    out = run / "pred"
    infer = bundle_workflow(
        bundle,
        "inference.json",
        "infer",
        dataset_dir=dataset,
        bundle_root=str(run),
        ckpt_path=str(run / "models_rank0" / "model.pt"),
        output_dir=str(out),
        num_samples=2,
        num_inference_steps=2,
        **TINY_NETWORKS[bundle],
        **overrides,
    )
    infer.initialize()
    infer.run()
    loaded = infer.parser.get_parsed_content("network").state_dict()  # what the checked loader loaded
    infer.finalize()
    assert all(torch.equal(loaded[k].cpu(), weights[k]) for k in weights)
    return out


@pytest.mark.slow
def test_isic2018_torchrun_train(tmp_path: Path) -> None:
    dataset = make_synthetic_isic2018(
        str(tmp_path / "isic"), num_train=12, num_val=2, num_test=2, image_size=(40, 56), seed=3
    )
    run = tmp_path / "run"
    run.mkdir()
    _train_with_torchrun("medsegdiff_isic2018", dataset, run, batch_size=2)
    weights = _check_ranks(run, iterations=12 // 2 // 2)  # 12 cases, 2 ranks, batches of 2
    out = _infer("medsegdiff_isic2018", dataset, run, weights)
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert len(masks) == 2 and json.loads((out / "metrics.json").read_text())["num_cases"] == 2


@pytest.mark.slow
def test_polyp_torchrun_train(tmp_path: Path) -> None:
    dataset = make_synthetic_kvasir_seg(tmp_path / "kvasir", num_cases=10, image_size=(32, 40), seed=3)
    run = tmp_path / "run"
    run.mkdir()
    # 10 cases, val_fraction 0.2: 8 training cases, 2 ranks, batches of 2 -> 2 iterations per rank
    _train_with_torchrun("medsegdiff_polyp", str(dataset), run, batch_size=2, val_fraction=0.2)
    weights = _check_ranks(run, iterations=2)
    out = _infer("medsegdiff_polyp", str(dataset), run, weights)
    assert json.loads((out / "metrics.json").read_text())["num_cases"] == 10
