# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Resume equals not stopping: training killed with SIGKILL and resumed ends with the weights of an uninterrupted run.

Every run is ``python -m monai.bundle run`` in a subprocess, as a user runs the bundle. A kill point is one extra
expression in the bundle's ``run`` list (an extra config file written by the test), inserted after the checkpoint
handlers are attached and before the trainer runs, that SIGKILLs the process from an ignite event: deterministic,
no timing involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_utils import TINY_NETWORKS

from monai_diffseg.data import make_synthetic_isic2018

ROOT = Path(__file__).resolve().parents[2]
# names the bundle's expressions can reach ("os" and "monai" are in its imports; MONAI parses an expression with the
# word "import" in it as an import statement, so no __import__ here)
EVENTS = "monai.engines.workflow.Events"
KILL = "os.kill(os.getpid(), 9)"


def _kill_at_iteration(trainer: str, iteration: int) -> str:
    """Killed mid-epoch, after ``iteration`` (counted over the whole run) has completed."""
    return f"$@{trainer}.add_event_handler({EVENTS}.ITERATION_COMPLETED(once={iteration}), lambda e: {KILL})"


def _kill_after_checkpoint(trainer: str, epoch: int) -> str:
    """Killed at the end of ``epoch``, right after the checkpoint handlers (attached before it) have saved."""
    return f"$@{trainer}.add_event_handler({EVENTS}.EPOCH_COMPLETED(once={epoch}), lambda e: {KILL})"


def _kill_in_validation(epoch: int) -> str:
    """Killed in the validation of ``epoch``: trained, not yet checkpointed."""
    return (
        f"$@validate#evaluator.add_event_handler({EVENTS}.ITERATION_COMPLETED, "
        f"lambda e: e.state.epoch == {epoch} and {KILL})"
    )


def _run(
    bundle: str, settings: dict, out: Path, kill: str | None = None, index: int = -1
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of ``bundle``'s train.json with ``settings`` in ``out``.

    ``kill`` (an expression that SIGKILLs the process) goes into the bundle's ``run`` list before item ``index``.
    """
    configs = ROOT / "bundles" / bundle / "configs"
    extra = dict(settings)
    if kill is not None:
        run = json.loads((configs / "train.json").read_text())["run"]
        extra["run"] = run[:index] + [kill] + run[index:]
    out.mkdir(parents=True, exist_ok=True)
    (out / "extra.json").write_text(json.dumps(extra))
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", json.dumps([str(configs / "train.json"), str(out / "extra.json")]),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    if kill is None:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    else:
        assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-3000:])
    return result


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # the resume files must load safely


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def _flat_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat_tensors(val, f"{prefix}.{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _flat_tensors(val, f"{prefix}.{i}").items()}
    return {}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("isic_resume")
    return make_synthetic_isic2018(str(root), num_train=12, num_val=4, num_test=0, image_size=(40, 56), seed=7)


@pytest.mark.slow
def test_medsegdiff_kill_and_resume_equals_uninterrupted(dataset: str, tmp_path: Path) -> None:
    # 3 iterations per epoch (12 cases, batch 4), 4 epochs, validation (which writes model.pt) every epoch
    settings = {
        "dataset_dir": dataset,
        **TINY_NETWORKS["medsegdiff_isic2018"],
        "num_epochs": 4,
        "batch_size": 4,
        "val_interval": 1,
        "val_num_inference_steps": 2,
        "val_num_samples": 2,
    }
    ref, cut = tmp_path / "uninterrupted", tmp_path / "interrupted"
    _run("medsegdiff_isic2018", {**settings, "bundle_root": str(ref)}, ref)

    resumed = {**settings, "bundle_root": str(cut)}
    _run("medsegdiff_isic2018", resumed, cut, _kill_at_iteration("train#trainer", 5))  # mid-epoch 2
    assert _load(cut / "models" / "checkpoint_last.pt")["trainer"]["iteration"] == 3  # epoch 1
    _run("medsegdiff_isic2018", resumed, cut, _kill_after_checkpoint("train#trainer", 2))
    assert _load(cut / "models" / "checkpoint_last.pt")["trainer"]["iteration"] == 6  # epoch 2
    _run("medsegdiff_isic2018", resumed, cut, _kill_in_validation(3))  # epoch 3 trained, not saved
    assert _load(cut / "models" / "checkpoint_last.pt")["trainer"]["iteration"] == 6  # epoch 2
    stale = cut / "models" / "tmpa1b2c3d4"  # what a kill during an atomic save leaves behind
    stale.write_bytes(b"")
    _run("medsegdiff_isic2018", resumed, cut)
    assert not stale.exists()

    want, got = _load(ref / "models" / "checkpoint_last.pt"), _load(cut / "models" / "checkpoint_last.pt")
    assert got["trainer"]["iteration"] == want["trainer"]["iteration"] == 12
    diff = _max_abs_diff(want["model"], got["model"])
    print(f"kill-and-resume vs uninterrupted: max abs weight difference {diff}")
    assert diff == 0.0
    assert _max_abs_diff(_flat_tensors(want["optimizer"]), _flat_tensors(got["optimizer"])) == 0.0
    assert _max_abs_diff(_flat_tensors(want["random_states"]), _flat_tensors(got["random_states"])) == 0.0
    assert want["best_model_saver"] == got["best_model_saver"]
    assert _max_abs_diff(_load(ref / "models" / "model.pt"), _load(cut / "models" / "model.pt")) == 0.0

    # re-running the finished command trains nothing and says so, with the way out
    finished = _run("medsegdiff_isic2018", resumed, cut)
    log = finished.stdout + finished.stderr
    assert "Training is already complete" in log and "--num_epochs" in log and "--resume false" in log
    assert _max_abs_diff(got["model"], _load(cut / "models" / "checkpoint_last.pt")["model"]) == 0.0


@pytest.mark.slow
def test_diffseg_two_stage_kill_and_resume_equals_uninterrupted(dataset: str, tmp_path: Path) -> None:
    # two trainers in one run: lesion model (2 epochs) then healthy model (2 epochs), 3 iterations per epoch; killed
    # once in each stage (the medsegdiff test covers the other kill points)
    settings = {
        "dataset_dir": dataset,
        **TINY_NETWORKS["diffseg_isic2018"],
        "batch_size": 4,
        "lesion_num_epochs": 2,
        "healthy_num_epochs": 2,
    }
    run = json.loads((ROOT / "bundles" / "diffseg_isic2018" / "configs" / "train.json").read_text())["run"]
    lesion_run, healthy_run = run.index("$@train#trainer.run()"), run.index("$@healthy#trainer.run()")
    ref, cut = tmp_path / "uninterrupted", tmp_path / "interrupted"
    _run("diffseg_isic2018", {**settings, "bundle_root": str(ref)}, ref)

    resumed = {**settings, "bundle_root": str(cut)}
    _run("diffseg_isic2018", resumed, cut, _kill_at_iteration("train#trainer", 4), lesion_run)  # lesion epoch 2
    assert _load(cut / "models" / "lesion_checkpoint_last.pt")["trainer"]["iteration"] == 3  # epoch 1
    _run("diffseg_isic2018", resumed, cut, _kill_at_iteration("healthy#trainer", 5), healthy_run)  # healthy epoch 2
    assert _load(cut / "models" / "healthy_checkpoint_last.pt")["trainer"]["iteration"] == 3  # epoch 1
    finished = _run("diffseg_isic2018", resumed, cut)
    log = finished.stdout + finished.stderr
    assert "Training is already complete" in log and "--lesion_num_epochs" in log  # the lesion stage was done

    for name in ("model_lesion.pt", "model_healthy.pt"):
        diff = _max_abs_diff(_load(ref / "models" / name)["model"], _load(cut / "models" / name)["model"])
        print(f"DiffSeg {name}: kill-and-resume vs uninterrupted max abs weight difference {diff}")
        assert diff == 0.0
