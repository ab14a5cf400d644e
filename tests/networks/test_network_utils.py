# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.networks.utils (checked checkpoint loading)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from monai_diffseg.networks.nets.medsegdiff import MedSegDiff
from monai_diffseg.networks.utils import (
    check_state_dict,
    load_network_weights,
    read_checkpoint,
    state_dict_mismatch_message,
)


def _mlp(hidden: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["raw", "model", "custom"])
def test_round_trip(tmp_path: Path, layout: str) -> None:
    src, dst = _mlp(seed=0), _mlp(seed=1)
    assert not _same(src, dst)
    path = tmp_path / "ckpt.pt"
    sd = src.state_dict()
    saved = {"raw": sd, "model": {"model": sd, "optimizer": {}}, "custom": {"net": sd, "epoch": 3}}[layout]
    torch.save(saved, path)
    key = "net" if layout == "custom" else "model"
    out = load_network_weights(dst, path, key=key)
    assert out is dst and _same(src, dst)
    load_network_weights(_mlp(seed=2), str(path), key=key)  # str paths too


def test_medsegdiff_round_trip(tmp_path: Path) -> None:
    kw = {"channels": (8, 16), "cond_channels": (8, 16), "norm_num_groups": 8, "num_head_channels": 8}
    torch.manual_seed(0)
    src = MedSegDiff(2, 3, 1, **kw)
    torch.save({"model": src.state_dict()}, tmp_path / "m.pt")
    torch.manual_seed(1)
    dst = load_network_weights(MedSegDiff(2, 3, 1, **kw), tmp_path / "m.pt")
    assert _same(src, dst)
    with pytest.raises(ValueError) as err:  # trained binary, loaded as 3-class
        load_network_weights(MedSegDiff(2, 3, 3, **kw), tmp_path / "m.pt")
    msg = str(err.value)
    assert "MedSegDiff" in msg and str(tmp_path / "m.pt") in msg
    assert "'in_conv.conv.weight': checkpoint (8, 1, 3, 3) vs network (8, 3, 3, 3)" in msg


def test_ddp_prefix_stripped(tmp_path: Path) -> None:
    src, dst = _mlp(seed=0), _mlp(seed=1)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pt")
    load_network_weights(dst, tmp_path / "ddp.pt")
    assert _same(src, dst)
    # a DataParallel-wrapped target is unwrapped, whichever prefix the checkpoint has
    wrapped = nn.DataParallel(_mlp(seed=2))
    load_network_weights(wrapped, tmp_path / "ddp.pt")
    assert _same(src, wrapped.module)
    torch.save({"model": src.state_dict()}, tmp_path / "plain.pt")
    wrapped = nn.DataParallel(_mlp(seed=3))
    load_network_weights(wrapped, tmp_path / "plain.pt")
    assert _same(src, wrapped.module)
    # a network whose own keys start with "module." keeps them
    own = nn.ModuleDict({"module": _mlp(seed=4)})
    torch.save(own.state_dict(), tmp_path / "own.pt")
    target = nn.ModuleDict({"module": _mlp(seed=5)})
    load_network_weights(target, tmp_path / "own.pt")
    assert _same(own, target)


def test_mismatch_message(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"model": _mlp(hidden=8).state_dict()}, path)
    dst = _mlp(hidden=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_network_weights(dst, path)
    msg = str(err.value)
    assert str(path) in msg and "Sequential" in msg
    assert "'0.weight': checkpoint (8, 3) vs network (4, 3)" in msg
    assert "'2.weight': checkpoint (2, 8) vs network (2, 4)" in msg
    assert "3 shape mismatch" in msg
    assert "different network_def" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing was loaded


def test_missing_and_unexpected_keys_listed_with_counts(tmp_path: Path) -> None:
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(7)])  # 14 keys
    small = nn.Sequential(nn.Linear(2, 2))
    torch.save(big.state_dict(), tmp_path / "big.pt")
    with pytest.raises(ValueError) as err:
        load_network_weights(small, tmp_path / "big.pt")
    msg = str(err.value)
    assert "12 unexpected key(s)" in msg and "(7 more)" in msg and "'1.weight'" in msg
    assert "missing key" not in msg
    torch.save(small.state_dict(), tmp_path / "small.pt")
    with pytest.raises(ValueError, match=r"12 missing key\(s\).*\(7 more\)"):
        load_network_weights(big, tmp_path / "small.pt")
    # strict=False tolerates missing keys (but never shape mismatches)
    load_network_weights(big, tmp_path / "small.pt", strict=False)
    assert torch.equal(big[0].weight, small[0].weight)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_network_weights(nn.Sequential(nn.Linear(3, 2)), tmp_path / "small.pt", strict=False)


def test_ddp_prefix_hint() -> None:
    net = _mlp()
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    msg = state_dict_mismatch_message(net, sd, "x.pt")
    assert msg is not None and "'module.' prefix" in msg
    assert state_dict_mismatch_message(net, net.state_dict(), "x.pt") is None
    check_state_dict(net, net.state_dict(), "x.pt")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "model.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_network_weights(_mlp(), path)


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint", b"PK\x03\x04truncated zip"])
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_network_weights(_mlp(), path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    torch.save({"model": _mlp().state_dict()}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt"):
        load_network_weights(_mlp(), tmp_path / "cut.pt")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(ValueError, match=r"opt.pt.*no entry 'model'.*'epoch', 'optimizer'"):
        load_network_weights(_mlp(), tmp_path / "opt.pt")
    torch.save({"model": _mlp().state_dict()}, tmp_path / "nested.pt")
    with pytest.raises(ValueError, match="not a raw state dict"):
        load_network_weights(_mlp(), tmp_path / "nested.pt", key=None)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_network_weights(_mlp(), tmp_path / "list.pt")


class _Payload:
    """Unpickling this runs ``_touch(marker)``: what a malicious checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


_PAYLOAD_LOG: dict[str, list] = {"caught": [], "warned_before": []}


def _touch(marker: str) -> str:
    warned = any("weights_only=False" in str(w.message) for w in _PAYLOAD_LOG["caught"])
    _PAYLOAD_LOG["warned_before"].append(warned)
    Path(marker).write_text("payload ran")
    return marker


def test_pickle_payload_refused_by_default(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    torch.save({"model": _mlp().state_dict(), "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as err:
        load_network_weights(_mlp(), tmp_path / "evil.pt")
    assert "evil.pt" in str(err.value) and "trusted=True" in str(err.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="trusted=True"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_trusted_warns_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    src = _mlp(seed=0)
    torch.save(
        {"model": src.state_dict(), "args": argparse.Namespace(lr=0.1), "x": _Payload(marker)}, tmp_path / "a.pt"
    )
    dst = _mlp(seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _PAYLOAD_LOG.update(caught=caught, warned_before=[])  # the payload looks at the warnings recorded so far
        load_network_weights(dst, tmp_path / "a.pt", trusted=True)
    assert marker.exists() and _PAYLOAD_LOG["warned_before"] == [True]
    assert any("trusted=True" in str(w.message) for w in caught)
    assert _same(src, dst)
