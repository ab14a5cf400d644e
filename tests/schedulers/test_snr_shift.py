from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from bundle_utils import ROOT
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.schedulers import snr_shifted_schedule


def _snr(scheduler) -> torch.Tensor:
    a = scheduler.alphas_cumprod.double()
    return a / (1 - a)


@pytest.mark.parametrize("base", ["scaled_linear_beta", "linear_beta", "cosine"])
@pytest.mark.parametrize("scale", [0.1, 0.25, 2.0])
def test_snr_is_scaled_at_every_step(base, scale):
    ref = DDPMScheduler(1000, schedule=base)
    shifted = DDPMScheduler(1000, schedule="snr_shifted", base=base, snr_scale=scale)
    ratio = _snr(shifted) / _snr(ref)
    # the last steps of the cosine base clip beta at 0.999; compare where the base is not clipped
    keep = ref.betas < 0.99
    assert torch.allclose(ratio[keep], torch.full_like(ratio[keep], scale), rtol=1e-3)
    assert torch.all(shifted.betas > 0) and torch.all(shifted.betas <= 0.999)


def test_scale_one_is_the_base_and_ddim_reads_it_by_name():
    ref = DDIMScheduler(1000, schedule="scaled_linear_beta")
    same = DDIMScheduler(1000, schedule="snr_shifted", snr_scale=1.0)
    assert torch.allclose(same.alphas_cumprod, ref.alphas_cumprod, atol=1e-6)
    lower = DDIMScheduler(1000, schedule="snr_shifted", snr_scale=0.25)
    assert torch.all(lower.alphas_cumprod < ref.alphas_cumprod)


def test_base_args_reach_the_base_schedule():
    ref = DDPMScheduler(100, schedule="linear_beta", beta_start=1e-3, beta_end=5e-2)
    out = snr_shifted_schedule(100, base="linear_beta", snr_scale=1.0, beta_start=1e-3, beta_end=5e-2)
    assert torch.allclose(out[2], ref.alphas_cumprod, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [({"snr_scale": 0.0}, "snr_scale"), ({"base": "nope"}, "base must be")])
def test_bad_arguments_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        snr_shifted_schedule(10, **kwargs)


@pytest.mark.parametrize("bundle", ["medsegdiff_isic2018", "medsegdiff_brats"])
def test_bundle_configs_resolve_the_shifted_schedule_by_name(bundle):
    """A fresh interpreter (nothing of ours imported yet) resolves ``noise_schedule: "snr_shifted"`` in a bundle's
    train.json: importing any part of the package (the config's own imports) registers the schedule before its
    scheduler is built."""
    configs = ROOT / "bundles" / bundle / "configs"
    script = (
        "import json, sys\n"
        "from monai.bundle import ConfigParser\n"
        "p = ConfigParser()\n"
        f"p.read_config({str(configs / 'train.json')!r})\n"
        "p['noise_schedule'] = 'snr_shifted'\n"
        "p['scheduler']['snr_scale'] = 0.25\n"
        "s = p.get_parsed_content('scheduler')\n"
        "a = s.alphas_cumprod.double()\n"
        "print(json.dumps(float((a / (1 - a))[500])))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ref = DDPMScheduler(1000, schedule="scaled_linear_beta").alphas_cumprod.double()
    assert json.loads(out.stdout.strip().splitlines()[-1]) == pytest.approx(
        0.25 * float((ref / (1 - ref))[500]), rel=1e-6
    )
