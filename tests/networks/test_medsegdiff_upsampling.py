# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""MedSegDiff decoder upsampling: no block lattice (issue 10), and old checkpoints still load as they were trained."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS, MedSegDiff
from monai_diffseg.networks.utils import load_network_weights

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "uncertainty_artifacts.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("uncertainty_artifacts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


block_edge_ratio = _load_benchmark().block_edge_ratio


def _tiny(mode: str | None = None, seed: int = 0, spatial_dims: int = 2) -> MedSegDiff:
    torch.manual_seed(seed)
    kwargs = {} if mode is None else {"upsample_mode": mode}
    return MedSegDiff(spatial_dims, 3, 1, **MEDSEGDIFF_CONFIGS["tiny"], **kwargs).eval()


def _coarse_response(net: MedSegDiff, seed: int) -> torch.Tensor:
    """Output change ``(H, W)`` when the coarsest decoder features get a small random perturbation."""
    g = torch.Generator().manual_seed(seed)
    image, x_t = torch.rand(1, 3, 64, 64, generator=g), torch.randn(1, 1, 64, 64, generator=g)
    coarse = 64 // net.size_divisor
    delta = 1e-2 * torch.randn(1, net.channels[-1], coarse, coarse, generator=g)
    t = torch.tensor([10])
    with torch.no_grad():
        handle = net.mid_res.register_forward_hook(lambda module, args, out: out + delta)
        try:
            perturbed = net(x_t, t, image=image)
        finally:
            handle.remove()
        return (perturbed - net(x_t, t, image=image))[0, 0]


def test_default_is_linear() -> None:
    net = _tiny()
    assert net.upsample_mode == "linear"
    modes = {m.mode for m in net.upsamples.modules() if isinstance(m, torch.nn.Upsample)}
    assert modes == {"bilinear"}
    assert {m.mode for m in _tiny(spatial_dims=3).upsamples.modules() if isinstance(m, torch.nn.Upsample)} == {
        "trilinear"
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coarse_features_leave_no_block_lattice(seed: int) -> None:
    """What the coarsest level adds to the output is smooth with linear upsampling, blocky with nearest."""
    period = _tiny().size_divisor
    ratios = {}
    for mode in ("linear", "nearest"):
        net = _tiny(mode, seed)
        responses = torch.stack([_coarse_response(net, 10 * seed + k) for k in range(4)])
        ratios[mode] = block_edge_ratio(responses, period)
    assert ratios["linear"] < 1.0, f"linear upsampling left steps on the {period}-px grid: {ratios}"
    assert ratios["nearest"] > 1.15, f"the measure no longer sees nearest-neighbour blocks: {ratios}"


def test_same_parameters_in_both_modes() -> None:
    linear, nearest = _tiny("linear").state_dict(), _tiny("nearest").state_dict()
    assert linear.keys() == nearest.keys()
    assert all(linear[k].shape == nearest[k].shape for k in linear)
    assert all(isinstance(v, torch.Tensor) for v in linear.values())  # MONAI's copy_model_state expects tensors
    assert int(linear["decoder_upsample_mode"]) != int(nearest["decoder_upsample_mode"])


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="bicubic"):
        _tiny("bicubic")


def _legacy_state(net: MedSegDiff) -> dict:
    """A state dict as saved before ``upsample_mode`` existed (no ``decoder_upsample_mode`` entry)."""
    state = net.state_dict()
    del state["decoder_upsample_mode"]
    return state


def _outputs(net: MedSegDiff) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x_t, image = torch.randn(2, 1, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
        return net(x_t, torch.tensor([5, 500]), image=image)


def test_legacy_checkpoint_loads_as_nearest(tmp_path) -> None:
    old = _tiny("nearest", seed=1)
    expected = _outputs(old)
    net = _tiny()  # built with the new default
    legacy = _legacy_state(old)
    with pytest.warns(UserWarning, match="saved before the `upsample_mode` option"):
        net.load_state_dict(legacy)  # strict
    assert "decoder_upsample_mode" not in legacy  # the caller's dict is left alone
    assert net.upsample_mode == "nearest" and int(net.state_dict()["decoder_upsample_mode"]) == 1
    assert torch.equal(_outputs(net), expected)
    # the checked loader (bundles, load_network_weights) accepts it too
    path = tmp_path / "old.pt"
    torch.save({"model": _legacy_state(old)}, path)
    net = _tiny()
    with pytest.warns(UserWarning, match="saved before"):
        load_network_weights(net, path)
    assert net.upsample_mode == "nearest" and torch.equal(_outputs(net), expected)


def test_new_checkpoint_round_trip_without_warning(tmp_path) -> None:
    trained = _tiny("linear", seed=2)
    path = tmp_path / "new.pt"
    torch.save(trained.state_dict(), path)
    net = _tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.load_state_dict(torch.load(path, weights_only=True))
    assert net.upsample_mode == "linear" and torch.equal(_outputs(net), _outputs(trained))


def test_checkpoint_mode_wins_with_warning() -> None:
    trained = _tiny("nearest", seed=3)
    net = _tiny("linear")
    with pytest.warns(UserWarning, match="trained with upsample_mode='nearest'"):
        net.load_state_dict(trained.state_dict())
    assert net.upsample_mode == "nearest" and torch.equal(_outputs(net), _outputs(trained))


def test_bad_mode_record() -> None:
    state = _tiny().state_dict()
    state["decoder_upsample_mode"] = torch.tensor(7)
    with pytest.raises(RuntimeError, match="decoder_upsample_mode.*index into"):
        _tiny().load_state_dict(state)


def test_partial_state_dict_is_not_taken_for_a_legacy_checkpoint() -> None:
    """Loading only the condition encoder (transfer learning, strict=False) leaves the upsampling alone."""
    source = _tiny(seed=4)
    partial = {k: v for k, v in source.state_dict().items() if k.startswith("condition_encoder.")}
    net = _tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.load_state_dict(partial, strict=False)
    assert net.upsample_mode == "linear"


def test_pre_option_checkpoint_through_checked_loader(tmp_path) -> None:
    """A checkpoint from before both records (upsampling, FF-Parser grid) reproduces the old network exactly."""
    old = _tiny("nearest", seed=5)
    for block in old.ff_parsers:
        with torch.no_grad():
            block.weight_real.add_(0.3 * torch.randn_like(block.weight_real))
    state = {k: v for k, v in old.state_dict().items() if not k.endswith(("decoder_upsample_mode", "grid_version"))}
    with pytest.warns(UserWarning, match="grid_version"):
        old.load_state_dict(state)  # now computes as an old network did
    assert all(int(b.grid_version) == 0 for b in old.ff_parsers)
    expected = _outputs(old)
    torch.save({"model": state}, tmp_path / "old.pt")
    net = _tiny()
    with pytest.warns(UserWarning):
        load_network_weights(net, tmp_path / "old.pt")
    assert net.upsample_mode == "nearest" and all(int(b.grid_version) == 0 for b in net.ff_parsers)
    assert torch.equal(_outputs(net), expected)
