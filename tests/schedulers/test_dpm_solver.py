# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.schedulers.dpm_solver (multistep DPM-Solver++, Lu et al. 2022, arXiv:2211.01095)."""

from __future__ import annotations

import pytest
import torch

from monai_diffseg.schedulers import DPMSolverMultistepScheduler


def _run(scheduler, model, x, steps):
    """Solve from ``x`` (pure noise) with ``steps`` steps; returns (final sample, last x0)."""
    scheduler.set_timesteps(steps)
    x0 = x
    for t in scheduler.timesteps:
        out = model(x, int(t))
        x, x0 = scheduler.step(out, int(t), x)
    return x, x0


def _target(shape=(2, 1, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return torch.rand(shape, generator=g) * 2 - 1


def _noise(shape=(2, 1, 8, 8), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_oracle_reaches_target(prediction_type, order, steps):
    target = _target()
    sched = DPMSolverMultistepScheduler(prediction_type=prediction_type, solver_order=order)
    ac = sched.alphas_cumprod

    def model(x, t):
        a = ac[t]
        if prediction_type == "sample":
            return target.clone()
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        if prediction_type == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * target

    out, x0 = _run(sched, model, _noise(), steps)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, target, atol=1e-4, rtol=0)
    torch.testing.assert_close(x0, target, atol=1e-4, rtol=0)


def test_order1_is_ddim():
    sched = DPMSolverMultistepScheduler(prediction_type="epsilon", solver_order=1, clip_sample=False)
    sched.set_timesteps(10)
    ac = sched.alphas_cumprod.double()

    def model(x, t):
        return 0.5 * torch.tanh(x) + 0.1 * t / 1000.0

    x = _noise()
    ref = x.double()
    ts = [int(t) for t in sched.timesteps]
    for i, t in enumerate(ts):
        x, _ = sched.step(model(x, t), t, x)
        eps_hat = model(ref.float(), t).double()
        x0 = (ref - (1 - ac[t]).sqrt() * eps_hat) / ac[t].sqrt()
        a_s = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        ref = a_s.sqrt() * x0 + (1 - a_s).sqrt() * ((ref - ac[t].sqrt() * x0) / (1 - ac[t]).sqrt())
        torch.testing.assert_close(x, ref.float(), atol=1e-5, rtol=1e-5)


def test_gaussian_convergence_order():
    mu, sigma = 0.3, 0.5

    def make(order):
        sched = DPMSolverMultistepScheduler(prediction_type="epsilon", solver_order=order, clip_sample=False)
        ac = sched.alphas_cumprod.double()

        def model(x, t):  # exact eps-predictor of N(mu, sigma^2) data
            a = ac[t]
            return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * sigma**2 + 1 - a)).float()

        return sched, model

    x_t = _noise((256, 1, 4, 4))
    sched, model = make(1)
    ref, _ = _run(sched, model, x_t, 500)
    # closed-form ODE solution: x_t = sqrt(a_t) mu + sqrt(a_t sigma^2 + 1 - a_t) z with z fixed by x_T
    a_T = sched.alphas_cumprod[999].double()
    exact = (mu + sigma * (x_t.double() - a_T.sqrt() * mu) / (a_T * sigma**2 + 1 - a_T).sqrt()).float()
    assert (ref - exact).abs().mean() < 5e-3
    errors, errors_exact = {}, {}
    for order in (1, 2, 3):
        sched, model = make(order)
        out, _ = _run(sched, model, x_t, 20)
        errors[order] = (out - ref).abs().mean().item()
        errors_exact[order] = (out - exact).abs().mean().item()
    assert errors[2] < errors[1] and errors[3] < errors[1], errors
    assert errors_exact[2] < 0.5 * errors_exact[1] and errors_exact[3] < 0.5 * errors_exact[1], errors_exact
    # sanity: the solution is distributed roughly as the data
    assert abs(ref.mean().item() - mu) < 0.1 and abs(ref.std().item() - sigma) < 0.1


def test_set_timesteps_grid_and_reset():
    sched = DPMSolverMultistepScheduler()
    for n in (1, 5, 7, 20, 999, 1000):
        sched.set_timesteps(n)
        ts = sched.timesteps
        assert ts.dtype == torch.long and ts[0] == 999 and ts[-1] == (0 if n > 1 else 999)
        assert torch.all(ts[1:] < ts[:-1])
        assert len(ts) == n
    sched.set_timesteps(7)
    expected = torch.linspace(999, 0, 7, dtype=torch.float64).round().long()
    assert torch.equal(sched.timesteps, expected)

    sched = DPMSolverMultistepScheduler(solver_order=3, prediction_type="epsilon")

    def model(x, t):
        return torch.sin(x) + t / 1000.0

    a, _ = _run(sched, model, _noise(), 12)
    b, _ = _run(sched, model, _noise(), 12)
    assert torch.equal(a, b)
    # restarting at the first timestep without set_timesteps also resets the history
    x = _noise()
    for t in sched.timesteps:
        x, _ = sched.step(model(x, int(t)), int(t), x)
    torch.testing.assert_close(x, a)


@pytest.mark.parametrize(
    "kwargs",
    [{"solver_order": 4}, {"solver_order": 0}, {"prediction_type": "noise"}, {"dynamic_thresholding_ratio": 1.5}],
)
def test_invalid_constructor_args(kwargs):
    with pytest.raises(ValueError):
        DPMSolverMultistepScheduler(**kwargs)


def test_invalid_step_args():
    sched = DPMSolverMultistepScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(0)
    sched.set_timesteps(5)
    x = _noise()
    with pytest.raises(ValueError, match="timestep"):
        sched.step(x, 500, x)
    with pytest.raises(ValueError, match="timestep"):  # out of order
        sched.step(x, int(sched.timesteps[2]), x)


def test_half_precision_and_thresholding():
    target = _target()
    sched = DPMSolverMultistepScheduler(prediction_type="sample", thresholding=True, sample_max_value=2.0)
    sched.set_timesteps(5)
    x = _noise()
    for t in sched.timesteps:
        x, x0 = sched.step((3 * target).half(), int(t), x)
        assert x.dtype == torch.float32 and x0.dtype == torch.float32
        assert torch.isfinite(x).all()
    assert x0.abs().max() <= 1.0 + 1e-6  # thresholded x0 lies in [-1, 1]
    # static clipping
    sched = DPMSolverMultistepScheduler(prediction_type="sample")
    out, _ = _run(sched, lambda x, t: (3 * target).half(), _noise(), 5)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_inferer_compatibility():
    from monai_diffseg.inferers import DiffusionSegmentationInferer
    from monai_diffseg.networks.nets import MedSegDiff

    torch.manual_seed(0)
    net = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4).eval()
    image = torch.randn(2, 3, 16, 16)
    inferer = DiffusionSegmentationInferer(
        DPMSolverMultistepScheduler(prediction_type="sample"), num_inference_steps=5, num_samples=3, seed=0
    )
    out = inferer(image, net)
    assert out.shape == (2, 1, 16, 16)
    assert out.min() >= 0.0 and out.max() <= 1.0
    batched = inferer.sample(image, net)
    assert batched.shape == (2, 3, 1, 16, 16)
    for e in range(3):
        single = inferer.sample(image, net, num_samples=1, seed=e)
        torch.testing.assert_close(batched[:, e], single[:, 0], atol=1e-5, rtol=1e-5)
