# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.handlers.AtomicCheckpointSaver and remove_stale_temp_files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_diffseg.handlers import AtomicCheckpointSaver, remove_stale_temp_files


def _validator(scores: list[float], net: nn.Module, weights: list[float]) -> Engine:
    """An engine whose epoch ``e`` sets the network's weights to ``weights[e - 1]`` and reports ``scores[e - 1]``."""

    def step(engine: Engine, batch) -> None:
        with torch.no_grad():
            net.weight.fill_(weights[engine.state.epoch - 1])

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(engine: Engine) -> None:
        engine.state.metrics["val_mean_dice"] = scores[engine.state.epoch - 1]

    return engine


def _best_saver(save_dir: Path, net: nn.Module) -> AtomicCheckpointSaver:
    return AtomicCheckpointSaver(
        save_dir=str(save_dir),
        save_dict={"model": net},
        save_key_metric=True,
        key_metric_name="val_mean_dice",
        key_metric_filename="model.pt",
    )


def _saved_weight(path: Path) -> float:
    return float(torch.load(path, weights_only=True)["weight"].flatten()[0])


def test_best_model_survives_a_restart(tmp_path: Path) -> None:
    net = nn.Linear(2, 1, bias=False)
    saver = _best_saver(tmp_path, net)
    first = _validator([0.5, 0.8], net, [1.0, 2.0])
    saver.attach(first)
    first.run([0], max_epochs=2)
    assert _saved_weight(tmp_path / "model.pt") == 2.0
    torch.save({"saver": saver.state_dict()}, tmp_path / "checkpoint_last.pt")

    # restart: a new saver knows the best score only if its record is loaded
    restarted = _best_saver(tmp_path, net)
    second = _validator([0.6, 0.9], net, [3.0, 4.0])
    restarted.attach(second)
    restarted.load_state_dict(torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["saver"])
    second.run([0], max_epochs=1)
    assert _saved_weight(tmp_path / "model.pt") == 2.0  # 0.6 < 0.8: the worse model does not replace the best
    second.run([0], max_epochs=2)
    assert _saved_weight(tmp_path / "model.pt") == 4.0  # 0.9 > 0.8

    # without the record (the behaviour this fixes), the worse model replaces the best
    forgetful = _best_saver(tmp_path / "forgetful", net)
    (tmp_path / "forgetful" / "model.pt").parent.mkdir(exist_ok=True)
    torch.save(nn.Linear(2, 1, bias=False).state_dict(), tmp_path / "forgetful" / "model.pt")
    third = _validator([0.1], net, [5.0])
    forgetful.attach(third)
    third.run([0], max_epochs=1)
    assert _saved_weight(tmp_path / "forgetful" / "model.pt") == 5.0


def test_state_dict_holds_best_metric_of_attached_engine(tmp_path: Path) -> None:
    net = nn.Linear(2, 1, bias=False)
    saver = _best_saver(tmp_path, net)
    engine = _validator([0.7], net, [1.0])
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    engine.state.best_metric, engine.state.best_metric_epoch = 0.7, 1  # as MONAI's evaluators record it
    state = saver.state_dict()
    assert state == {"_saved": [(0.7, "model_key_metric=0.7000.pt")], "best_metric": 0.7, "best_metric_epoch": 1}
    other = _validator([0.1], net, [1.0])
    restored = _best_saver(tmp_path, net)
    restored.attach(other)
    restored.load_state_dict(state)
    assert (other.state.best_metric, other.state.best_metric_epoch) == (0.7, 1)


def test_record_of_a_deleted_best_model_is_dropped(tmp_path: Path) -> None:
    net = nn.Linear(2, 1, bias=False)
    saver = _best_saver(tmp_path, net)
    with pytest.warns(UserWarning, match="model.pt"):
        saver.load_state_dict({"_saved": [(0.9, "model_key_metric=0.9000.pt")]})  # no model.pt on disk
    engine = _validator([0.2], net, [7.0])
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    assert _saved_weight(tmp_path / "model.pt") == 7.0


def test_fixed_name_files_are_never_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overwriting checkpoint_last.pt / model.pt writes a temp file then renames it: the old file stays until then."""
    net = nn.Linear(2, 1, bias=False)
    trainer = Engine(lambda engine, batch: None)
    AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, interval_filename="checkpoint_last.pt"
    ).attach(trainer)
    validator = _validator([0.1, 0.2, 0.3], net, [1.0, 2.0, 3.0])
    _best_saver(tmp_path, net).attach(validator)
    trainer.run([0], max_epochs=1)
    validator.run([0], max_epochs=1)
    seen = []
    save = torch.save

    def spy(obj, f, *args, **kwargs):
        seen.append({name: (tmp_path / name).is_file() for name in ("checkpoint_last.pt", "model.pt")})
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    trainer.run([0], max_epochs=3)
    validator.run([0], max_epochs=3)
    assert len(seen) == 4 and all(all(s.values()) for s in seen)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt", "model.pt"]
    assert _saved_weight(tmp_path / "model.pt") == 3.0


def test_stale_temp_files_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("tmpab_12xyz", "tmpabcdefgh", "tmpABCDEFGH", "tmpabc", "tmpabcdefghi", "notes.txt", "model.pt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "tmpzzzz9999").mkdir()
    with caplog.at_level(logging.WARNING):
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": nn.Linear(1, 1)}, save_interval=1)
    assert sorted(os.listdir(tmp_path)) == [
        "model.pt", "notes.txt", "tmpABCDEFGH", "tmpabc", "tmpabcdefghi", "tmpzzzz9999"
    ]  # fmt: skip
    assert "tmpab_12xyz" in caplog.text and "tmpabcdefgh" in caplog.text
    assert remove_stale_temp_files(tmp_path / "missing") == []
    (tmp_path / "tmp12345678").write_bytes(b"")
    AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": nn.Linear(1, 1)}, save_interval=1, remove_stale_temp=False
    )
    assert (tmp_path / "tmp12345678").exists()


def test_final_model_saver_writes_unless_a_best_model_exists(tmp_path: Path) -> None:
    from monai_diffseg.handlers import FinalModelSaver

    net = nn.Linear(1, 1, bias=False)
    best = _best_saver(tmp_path, net)
    trainer = Engine(lambda e, b: net.weight.data.fill_(7.0))
    FinalModelSaver(tmp_path, {"model": net}, "model.pt", best_saver=best).attach(trainer)
    trainer.run([0], max_epochs=1)  # no validation ran: the final weights
    assert best.best_model_file is None
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 7.0  # bare state dict
    assert not [p for p in os.listdir(tmp_path) if p.startswith("tmp")]  # atomic write left nothing behind

    validator = _validator([0.5], net, [3.0])
    best.attach(validator)
    validator.run([0], max_epochs=1)  # a validated best model (weight 3) ...
    assert best.best_model_file == str(tmp_path / "model.pt")
    trainer.run([0], max_epochs=2)  # ... is kept at the end of the run (weights are 7 again)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 3.0
