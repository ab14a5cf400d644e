# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""MLflow tracking of the bundles' training (``--use_mlflow true``): what a short run logs, read back with mlflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow
from monai.bundle import ConfigParser
from monai.utils import optional_import, path_to_sqlite_uri

from monai_diffseg.data import make_synthetic_isic2018
from monai_diffseg.handlers import tracking_disabled

mlflow, has_mlflow = optional_import("mlflow")

BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "train.json").is_file())


def test_tracking_switch() -> None:
    """The command line passes --use_mlflow true/false as strings; "false" must switch it off, typos must fail."""
    for on in (True, "true", "True", " yes ", "1"):
        assert tracking_disabled(on) is False
    for off in (False, None, "false", "False", "0", "no"):
        assert tracking_disabled(off) is True
    with pytest.raises(ValueError, match="use_mlflow must be true or false, got 'ture'"):
        tracking_disabled("ture")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_train_config_has_the_mlflow_option(bundle: str) -> None:
    """Off by default; every MLFlowHandler entry is switched by use_mlflow; the logged parameters resolve."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    assert parser["use_mlflow"] is False
    entries = [
        h
        for key in ("train#checkpoint_handlers", "validate#handlers", "healthy#checkpoint_handlers")
        if key in parser
        for h in parser[key]
        if isinstance(h, dict) and h.get("_target_") == "MLFlowHandler"
    ]
    assert entries and all(h["_disabled_"] == "$monai_diffseg.handlers.tracking_disabled(@use_mlflow)" for h in entries)
    assert sum("artifacts" in h for h in entries) == 1  # the model, logged once at the end of training
    params = parser.get_parsed_content("mlflow_params")
    assert params and all(v is not None for v in params.values())
    assert parser.get_parsed_content("mlflow_tracking_uri").startswith("sqlite:///")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("isic_mlflow")
    return make_synthetic_isic2018(str(root), num_train=4, num_val=2, num_test=1, image_size=(40, 56), seed=5)


def _train(dataset: str, out: Path, **override) -> None:
    wf = bundle_workflow(
        "medsegdiff_isic2018",
        "train.json",
        "train",
        dataset_dir=dataset,
        bundle_root=str(out),
        num_epochs=1,
        val_interval=1,
        batch_size=2,
        val_num_inference_steps=2,
        val_num_samples=2,
        **TINY_NETWORKS["medsegdiff_isic2018"],
        **override,
    )
    wf.initialize()
    wf.run()
    wf.finalize()


def test_tracking_off_by_default_writes_nothing(dataset: str, tmp_path: Path) -> None:
    _train(dataset, tmp_path)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert not (tmp_path / "eval" / "mlruns.db").exists() and not (tmp_path / "eval" / "mlruns").exists()


@pytest.mark.skipif(not has_mlflow, reason="mlflow not installed (tracking extra)")
def test_short_run_logs_params_metrics_and_model(dataset: str, tmp_path: Path) -> None:
    """2 iterations + 1 validation: parameters, the per-iteration loss, the validation Dice and model.pt."""
    _train(dataset, tmp_path, use_mlflow="true", mlflow_run_name="short")
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(tmp_path / "eval" / "mlruns.db")))
    experiment = client.get_experiment_by_name("medsegdiff_isic2018")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["short"] and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["batch_size"] == "2"
    assert json.loads(run.data.params["channels"]) == [8, 16] and run.data.params["max_epochs"] == "1"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2]  # 4 training images, batch 2
    dice = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert len(dice) == 1 and dice[0].step == 1 and 0.0 <= dice[0].value <= 1.0
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.pt"]
    local = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "download"))
    assert Path(local).read_bytes() == (tmp_path / "models" / "model.pt").read_bytes()
    assert os.path.isdir(tmp_path / "eval" / "mlruns")  # artifacts beside the database, under the bundle output


@pytest.mark.skipif(not has_mlflow, reason="mlflow not installed (tracking extra)")
def test_diffseg_logs_both_trainers_in_one_run(dataset: str, tmp_path: Path) -> None:
    """DiffSeg trains two models one after the other: one run holds both losses and the final model.pt."""
    wf = bundle_workflow(
        "diffseg_isic2018",
        "train.json",
        "train",
        dataset_dir=dataset,
        bundle_root=str(tmp_path),
        lesion_num_epochs=1,
        healthy_num_epochs=1,
        batch_size=2,
        use_mlflow=True,
        **TINY_NETWORKS["diffseg_isic2018"],
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(tmp_path / "eval" / "mlruns.db")))
    runs = client.search_runs([client.get_experiment_by_name("diffseg_isic2018").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert runs[0].data.params["lesion_num_epochs"] == "1" and runs[0].data.params["healthy_learning_rate"]
    assert len(client.get_metric_history(run_id, "train_loss")) == 2  # 4 lesion images, batch 2
    assert len(client.get_metric_history(run_id, "healthy_loss")) >= 1
    assert [a.path for a in client.list_artifacts(run_id)] == ["model.pt"]


@pytest.mark.slow  # two torchrun processes on the CPU
@pytest.mark.skipif(not has_mlflow, reason="mlflow not installed (tracking extra)")
def test_torchrun_only_rank0_logs(dataset: str, tmp_path: Path) -> None:
    """multi_gpu_train.json on 2 gloo ranks: one run, rank 0's 2 iterations (not 4 rows), one validation, the model."""
    from torchrun_utils import torchrun_bundle

    overrides = {
        **TINY_NETWORKS["medsegdiff_isic2018"],
        "dataset_dir": dataset,
        "bundle_root": str(tmp_path / "b"),
        "num_epochs": 1,
        "val_interval": 1,
        "batch_size": 1,  # 4 images on 2 ranks: 2 iterations each
        "val_num_inference_steps": 2,
        "val_num_samples": 2,
        "mlflow_run_name": "ddp",
    }
    torchrun_bundle(
        "medsegdiff_isic2018", ["train.json", "multi_gpu_train.json"], overrides, tmp_path, use_mlflow="true"
    )
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(tmp_path / "b" / "eval" / "mlruns.db")))
    runs = client.search_runs([client.get_experiment_by_name("medsegdiff_isic2018").experiment_id])
    assert [r.info.run_name for r in runs] == ["ddp"] and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert len(client.get_metric_history(run_id, "val_mean_dice")) == 1
    assert [a.path for a in client.list_artifacts(run_id)] == ["model.pt"]
