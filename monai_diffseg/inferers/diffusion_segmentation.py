# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Inferers for mask-diffusion segmentation: the training forward and the batched-ensemble sampler."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from monai.utils import convert_to_tensor, optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["DiffusionSegmentationInferer", "DiffusionSegmentationTrainInferer", "x0_to_probability"]


def _unwrap(network: nn.Module) -> nn.Module:
    """The module behind DataParallel / DistributedDataParallel wrappers (for its helper methods)."""
    return getattr(network, "module", network)


def x0_to_probability(x0: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """
    Map a predicted clean mask in ``[-1, 1]`` to foreground probabilities in ``[0, 1]``.

    One channel: ``(x0 + 1) / 2``. Several (one-hot) channels: the same, renormalised to sum to 1 over
    ``channel_dim``, so argmax and thresholding both work downstream.

    Args:
        x0: ``(..., C, *S)`` predicted ``x_0``.
        channel_dim: the channel dimension.
    """
    prob = (x0.float().clamp(-1.0, 1.0) + 1.0) / 2.0
    if prob.shape[channel_dim] > 1:
        total = prob.sum(dim=channel_dim, keepdim=True)
        # every channel at -1 (no class claims the pixel): uniform rather than all-zero probabilities
        uniform = torch.full_like(prob, 1.0 / prob.shape[channel_dim])
        prob = torch.where(total > 1e-6, prob / total.clamp_min(1e-6), uniform)
    return prob


class DiffusionSegmentationTrainInferer(Inferer):
    """
    Training-time "inferer" for ``SupervisedTrainer``: one denoising prediction per sample.

    It receives what :class:`monai_diffseg.engines.MaskDiffusionPrepareBatch` returns (``x_t`` as inputs and
    ``timesteps``/``image`` as keyword arguments) and calls the network's ``forward`` only, so gradients are
    synchronised under ``DistributedDataParallel``. With an anchor head it also returns the anchor logits for the
    auxiliary loss.

    Args:
        anchor: request the anchor (auxiliary mask) logits when the network has an anchor head.

    Returns:
        dict ``{"pred": (B, C, *S)}`` plus ``"anchor": (N, C, *S)`` when available.
    """

    def __init__(self, anchor: bool = True) -> None:
        super().__init__()
        self.anchor = anchor

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        if "timesteps" not in kwargs or "image" not in kwargs:
            raise ValueError(
                "DiffusionSegmentationTrainInferer needs `timesteps` and `image` keyword arguments; use it with "
                "monai_diffseg.engines.MaskDiffusionPrepareBatch as the trainer's prepare_batch."
            )
        if self.anchor and getattr(_unwrap(network), "anchor_head", None) is not None:  # type: ignore[arg-type]
            pred, anchor = network(inputs, *args, return_anchor=True, **kwargs)
            return {"pred": pred, "anchor": anchor}
        return {"pred": network(inputs, *args, **kwargs)}


class DiffusionSegmentationInferer(Inferer):
    """
    Sample segmentation masks from a mask-diffusion model: all ensemble members as one batch, image condition
    encoded once, few-step schedulers.

    This is the MONAI inferer contract ``inferer(inputs, network)`` that ``SupervisedEvaluator``, bundles and
    MONAI Label call. For each image it

    1. computes ``network.encode_condition(image)`` once (when the network has it; otherwise the image is passed to
       every step),
    2. draws ``num_samples`` independent noise masks, member ``e`` from its own generator seeded ``seed + e``, so a
       batched ensemble and a loop of single-member calls with seeds ``seed, seed + 1, ...`` give the same samples,
    3. runs the scheduler's reverse process (``scheduler.set_timesteps(num_inference_steps)``) with all members
       in one batch (or in chunks of ``member_batch_size`` members to bound memory), and
    4. returns the final ``x_0`` prediction mapped to probabilities (the trap of returning the raw network output,
       as the reference DPM-Solver path does, is avoided by always taking the scheduler's ``x_0``).

    Args:
        scheduler: MONAI scheduler (``DDPMScheduler``, ``DDIMScheduler``, or any with ``set_timesteps``/``step``);
            its ``prediction_type`` must match the training target. It is copied per call, never mutated.
        num_inference_steps: reverse steps (e.g. 1000 for DDPM, 10-50 for DDIM).
        num_samples: ensemble size ``E``.
        return_samples: return the stacked per-member probabilities ``(N, E, C, *S)`` instead of the fused
            ``(N, C, *S)`` mean.
        seed: base seed of the member generators; ``None`` draws one from torch's global RNG (so
            ``monai.utils.set_determinism`` still makes runs reproducible).
        eta: DDIM stochasticity (0 = deterministic DDIM).
        member_batch_size: at most this many members per network call (``None``: all members at once).
        progress: show a tqdm progress bar over the steps.

    Shapes:
        inputs ``(N, C_in, *S)`` -> ``(N, C, *S)`` fused foreground probability, or ``(N, E, C, *S)``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_inference_steps: int = 20,
        num_samples: int = 5,
        return_samples: bool = False,
        seed: int | None = None,
        eta: float = 0.0,
        member_batch_size: int | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if member_batch_size is not None and member_batch_size < 1:
            raise ValueError(f"member_batch_size must be >= 1 or None, got {member_batch_size}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.num_samples = num_samples
        self.return_samples = return_samples
        self.seed = seed
        self.eta = eta
        self.member_batch_size = member_batch_size
        self.progress = progress

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        samples = self.sample(inputs, network, *args, **kwargs)
        out = samples if self.return_samples else samples.mean(dim=1)
        if isinstance(inputs, MetaTensor) and not self.return_samples:
            # keep the image's spatial metadata so Invertd / SaveImaged can place the prediction
            meta_out = MetaTensor(out)
            meta_out.copy_meta_from(inputs)  # batched meta, applied_operations and is_batch
            out = meta_out
        return out

    def _stochastic(self, scheduler: Scheduler) -> bool:
        return isinstance(scheduler, DDPMScheduler) or (isinstance(scheduler, DDIMScheduler) and self.eta > 0)

    @torch.no_grad()
    def sample(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        num_samples: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """
        Draw the ensemble.

        Args:
            inputs: images ``(N, C_in, *S)``.
            network: the denoiser; called as ``network(x_t, timesteps, condition=...)`` or
                ``network(x_t, timesteps, image=...)``.
            args, kwargs: extra arguments passed to every network call.
            num_samples: override of the ensemble size.
            seed: override of the base seed.

        Returns:
            ``(N, E, C, *S)`` per-member foreground probabilities.
        """
        image = convert_to_tensor(inputs, track_meta=False)
        n = image.shape[0]
        members = int(num_samples or self.num_samples)
        base_seed = seed if seed is not None else self.seed
        if base_seed is None:
            base_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        module = _unwrap(network)  # type: ignore[arg-type]
        out_channels = int(getattr(module, "out_channels", 1))
        device = image.device

        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        if hasattr(scheduler, "alphas_cumprod"):
            scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)

        gens = [torch.Generator(device=device).manual_seed(base_seed + e) for e in range(members)]
        shape = (n, out_channels, *image.shape[2:])
        # member-major layout: row e * N + n is member e of image n (what MedSegDiff.forward expects)
        x = torch.cat([torch.randn(shape, generator=g, device=device) for g in gens], dim=0)

        encode = getattr(module, "encode_condition", None)
        chunk = members if self.member_batch_size is None else min(self.member_batch_size, members)

        def tile(c: torch.Tensor) -> torch.Tensor:
            return c.repeat(chunk, *([1] * (c.ndim - 1)))

        # condition (or image) tiled to one chunk of members once per call, not at every step; a smaller last
        # chunk takes a leading slice (member-major layout)
        if callable(encode):
            cond_name, cond_tiled = "condition", tuple(tile(c) for c in encode(image))
        else:
            cond_name, cond_tiled = "image", tile(image)
        stochastic = self._stochastic(scheduler)

        timesteps: Sequence[torch.Tensor] = scheduler.timesteps
        if self.progress and has_tqdm:
            timesteps = tqdm(timesteps, desc="diffusion sampling")
        x0 = x
        for t in timesteps:
            outputs = []
            for start in range(0, members, chunk):
                xs = x[start * n : (start + chunk) * n]
                tt = torch.full((xs.shape[0],), int(t), device=device, dtype=torch.long)
                rows = xs.shape[0]
                cond = tuple(c[:rows] for c in cond_tiled) if cond_name == "condition" else cond_tiled[:rows]
                pred = network(xs, tt, *args, **{cond_name: cond}, **kwargs)
                outputs.append(pred.float())
            model_output = torch.cat(outputs, dim=0)
            if stochastic:
                # member e's noise comes from its own generator, so results do not depend on batching
                steps = [
                    self._step(scheduler, model_output[e * n : (e + 1) * n], t, x[e * n : (e + 1) * n], gens[e])
                    for e in range(members)
                ]
                x = torch.cat([s[0] for s in steps], dim=0)
                x0 = torch.cat([s[1] for s in steps], dim=0) if steps[0][1] is not None else x
            else:
                x, pred_x0 = self._step(scheduler, model_output, t, x, None)
                x0 = pred_x0 if pred_x0 is not None else x
        prob = x0_to_probability(x0)
        return prob.reshape(members, n, *prob.shape[1:]).transpose(0, 1).contiguous()

    def _step(
        self,
        scheduler: Scheduler,
        model_output: torch.Tensor,
        t: torch.Tensor,
        x: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(scheduler, DDIMScheduler):
            out = scheduler.step(model_output, int(t), x, eta=self.eta, generator=generator)
        elif isinstance(scheduler, DDPMScheduler):
            out = scheduler.step(model_output, int(t), x, generator=generator)
        else:
            out = scheduler.step(model_output, int(t), x)
        if isinstance(out, tuple):
            return out[0], (out[1] if len(out) > 1 else None)
        return out, None
