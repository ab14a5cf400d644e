# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.handlers.CheckedCheckpointLoader."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from monai_diffseg.handlers import CheckedCheckpointLoader, RandomStateHandler


def _mlp(hidden: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _engine() -> Engine:
    return Engine(lambda engine, batch: None)


def test_is_a_checkpoint_loader() -> None:
    assert issubclass(CheckedCheckpointLoader, CheckpointLoader)


def test_round_trip_with_optimizer(tmp_path: Path) -> None:
    src = _mlp(seed=0)
    opt = torch.optim.SGD(src.parameters(), lr=0.5, momentum=0.9)
    src(torch.randn(2, 3)).sum().backward()
    opt.step()
    torch.save({"model": src.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    dst = _mlp(seed=1)
    dst_opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
    engine = _engine()
    CheckedCheckpointLoader(tmp_path / "ckpt.pt", {"model": dst, "optimizer": dst_opt}).attach(engine)
    engine.run([0], max_epochs=1)
    assert _same(src, dst)
    assert dst_opt.param_groups[0]["lr"] == 0.5


def test_single_entry_raw_state_dict(tmp_path: Path) -> None:
    src = _mlp(seed=0)
    torch.save(src.state_dict(), tmp_path / "raw.pt")  # CheckpointSaver with a one-entry save_dict writes this
    dst = _mlp(seed=1)
    CheckedCheckpointLoader(str(tmp_path / "raw.pt"), {"net": dst})(_engine())
    assert _same(src, dst)


def test_mismatch_raises_on_attached_engine(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save({"model": _mlp(hidden=8).state_dict()}, path)
    dst = _mlp(hidden=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    engine = _engine()
    CheckedCheckpointLoader(path, {"model": dst}).attach(engine)
    with pytest.raises(ValueError) as err:
        engine.run([0], max_epochs=1)
    msg = str(err.value)
    assert str(path) in msg and "Sequential" in msg
    assert "'0.weight': checkpoint (8, 3) vs network (4, 3)" in msg
    assert "different network_def" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_strict_false_and_strict_shape_false(tmp_path: Path) -> None:
    big = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    torch.save({"model": big.state_dict()}, tmp_path / "big.pt")
    small = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"2 unexpected key\(s\)"):
        CheckedCheckpointLoader(tmp_path / "big.pt", {"model": small})(_engine())
    CheckedCheckpointLoader(tmp_path / "big.pt", {"model": small}, strict=False)(_engine())
    assert torch.equal(small[0].weight, big[0].weight)
    # strict_shape=False is the parent's transfer-learning mode: layers that do not fit are skipped, no error
    # (MONAI 1.6.1's own CheckpointLoader loads nothing in this mode; the subclass loads what fits)
    torch.manual_seed(5)
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))
    head = other[1].weight.detach().clone()
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    load_dict = {"model": other, "optimizer": opt}
    torch.save({"model": big.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "big_opt.pt")
    with pytest.warns(UserWarning, match="skipping 'optimizer'"):
        CheckedCheckpointLoader(tmp_path / "big_opt.pt", load_dict, strict=False, strict_shape=False)(_engine())
    assert torch.equal(other[0].weight, big[0].weight) and torch.equal(other[0].bias, big[0].bias)
    assert torch.equal(other[1].weight, head)  # shape differs: kept
    assert set(load_dict) == {"model", "optimizer"}  # not modified


def test_missing_entry_named(tmp_path: Path) -> None:
    torch.save({"model": _mlp().state_dict(), "optimizer": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"no entry 'net'.*\['model', 'optimizer'\]"):
        CheckedCheckpointLoader(tmp_path / "ckpt.pt", {"net": _mlp(), "other": _mlp()})(_engine())


def test_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "runs" / "last.pt"
    with pytest.raises(FileNotFoundError, match="last.pt"):
        CheckedCheckpointLoader(path, {"model": _mlp()})(_engine())
    dst = _mlp(seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    engine = _engine()
    CheckedCheckpointLoader(path, {"model": dst}, name="ckpt_test", optional=True).attach(engine)
    with caplog.at_level(logging.INFO, logger="ckpt_test"):
        engine.run([0], max_epochs=1)  # resume-if-present: starts fresh
    assert any("last.pt" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        CheckedCheckpointLoader(tmp_path / "bad.pt", {"model": _mlp()})(_engine())


def test_ddp_prefixed_checkpoint_hint(tmp_path: Path) -> None:
    torch.save({"model": {f"module.{k}": v for k, v in _mlp().state_dict().items()}}, tmp_path / "ddp.pt")
    with pytest.raises(ValueError, match="'module.' prefix"):
        CheckedCheckpointLoader(tmp_path / "ddp.pt", {"model": _mlp()})(_engine())


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    torch.save({"model": _mlp().state_dict(), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt.*weights_only=True"):
        CheckedCheckpointLoader(tmp_path / "evil.pt", {"model": _mlp()})(_engine())
    assert not marker.exists()


def _trainer(max_epochs: int, iterations: list[int]) -> Engine:
    engine = Engine(lambda engine, batch: iterations.append(engine.state.iteration))
    engine.state.max_epochs = max_epochs  # as a MONAI trainer: known before run() loads the checkpoint
    return engine


def _trained_checkpoint(path: Path, epochs: int) -> None:
    engine = Engine(lambda engine, batch: None)
    engine.run([0, 1], max_epochs=epochs)
    torch.save({"model": _mlp().state_dict(), "trainer": engine.state_dict()}, path)


def test_finished_run_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _trained_checkpoint(tmp_path / "last.pt", epochs=2)
    iterations: list[int] = []
    engine = _trainer(2, iterations)
    loader = CheckedCheckpointLoader(tmp_path / "last.pt", {"model": _mlp(), "trainer": engine}, name="resume_test")
    loader.attach(engine)
    with caplog.at_level(logging.INFO, logger="resume_test"):
        engine.run([0, 1], max_epochs=2)
    assert iterations == []
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "already complete" in warning[0] and "last.pt" in warning[0]
    assert "--num_epochs N with N > 2" in warning[0] and "--resume false" in warning[0]

    # extending the run trains the missing epoch, without the warning
    caplog.clear()
    engine = _trainer(3, iterations)
    CheckedCheckpointLoader(
        tmp_path / "last.pt", {"model": _mlp(), "trainer": engine}, name="resume_test", epochs_key="lesion_num_epochs"
    ).attach(engine)
    with caplog.at_level(logging.INFO, logger="resume_test"):
        engine.run([0, 1], max_epochs=3)
    assert iterations == [5, 6] and not [r for r in caplog.records if r.levelno == logging.WARNING]

    # fewer epochs than the checkpoint: an error that says what to do
    engine = _trainer(1, iterations)
    CheckedCheckpointLoader(
        tmp_path / "last.pt", {"model": _mlp(), "trainer": engine}, epochs_key="lesion_num_epochs"
    ).attach(engine)
    with pytest.raises(ValueError, match=r"epoch 2, beyond max_epochs=1.*--lesion_num_epochs N.*--resume false"):
        engine.run([0, 1], max_epochs=1)


def test_missing_resume_entry_named(tmp_path: Path) -> None:
    _trained_checkpoint(tmp_path / "old.pt", epochs=1)
    engine = _trainer(2, [])
    load_dict = {"model": _mlp(), "trainer": engine, "random_states": RandomStateHandler()}  # new entry, old file
    with pytest.raises(ValueError, match=r"old.pt' has no entries \['random_states'\].*--resume false"):
        CheckedCheckpointLoader(tmp_path / "old.pt", load_dict)(engine)


def test_per_run_epochs_train_more_after_a_finished_run(tmp_path: Path) -> None:
    """MONAI Label's /train sets the trainer's max_epochs apart from the configured total: that many more epochs."""
    _trained_checkpoint(tmp_path / "last.pt", epochs=2)  # finished: epoch 2 of 2, 2 iterations per epoch
    iterations: list[int] = []
    engine = _trainer(1, iterations)
    CheckedCheckpointLoader(tmp_path / "last.pt", {"model": _mlp(), "trainer": engine}, total_epochs=100).attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert iterations == [5, 6] and engine.state.epoch == 3  # one more epoch, not zero

    # the configured total (max_epochs == total_epochs): a finished run trains nothing, as before
    iterations.clear()
    engine = _trainer(2, iterations)
    CheckedCheckpointLoader(tmp_path / "last.pt", {"model": _mlp(), "trainer": engine}, total_epochs=2).attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert iterations == []
    with pytest.raises(ValueError, match=r"fresh_per_run \['nope'\]"):
        CheckedCheckpointLoader(tmp_path / "last.pt", {"model": _mlp()}, fresh_per_run=["nope"])


def test_fresh_per_run_entries_are_not_restored(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: None)
    engine.run([0], max_epochs=1)
    saved_opt = torch.optim.SGD(_mlp().parameters(), lr=0.25)
    torch.save(
        {"model": _mlp().state_dict(), "trainer": engine.state_dict(), "opt": saved_opt.state_dict()}, tmp_path / "c.pt"
    )
    for total, want_lr in ((5, 0.5), (1, 0.25)):  # per-run (max_epochs 3 != 5): "opt" starts fresh; total: restored
        opt = torch.optim.SGD(_mlp().parameters(), lr=0.5)
        trainer = _trainer(3, []) if total == 5 else _trainer(1, [])
        load_dict = {"model": _mlp(), "trainer": trainer, "opt": opt}
        CheckedCheckpointLoader(tmp_path / "c.pt", load_dict, total_epochs=total, fresh_per_run=["opt"])(trainer)
        assert opt.param_groups[0]["lr"] == want_lr
