# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Inferers for mask-diffusion segmentation: the training forward and the batched-ensemble sampler."""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from monai.utils import convert_to_tensor, look_up_option, optional_import

from monai_diffseg.utils import batch_item_names, check_finite, check_floating, check_timesteps

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "DiffusionSegmentationInferer",
    "DiffusionSlidingWindowInferer",
    "DiffusionSegmentationTrainInferer",
    "memory_aware_member_chunk",
    "x0_to_probability",
]

#: accepted ``autocast`` values -> dtype
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _unwrap(network: nn.Module) -> nn.Module:
    """The module behind DataParallel / DistributedDataParallel wrappers (for its helper methods)."""
    return getattr(network, "module", network)


def _parameter_dtype(module: Any) -> torch.dtype | None:
    """The floating dtype of a module's first floating parameter (``None`` without one)."""
    if isinstance(module, nn.Module):
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def memory_aware_member_chunk(
    members: int, bytes_per_member: float, free_bytes: float, fraction: float = 0.8
) -> int:
    """
    How many ensemble members fit in one network call.

    Args:
        members: ensemble size ``E``.
        bytes_per_member: device memory one member adds to a denoising call (activations + tiled condition).
        free_bytes: device memory free before the call.
        fraction: share of ``free_bytes`` the sampler may use (headroom for the allocator and other tensors).

    Returns:
        ``min(E, floor(fraction * free_bytes / bytes_per_member))``, at least 1.
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if bytes_per_member <= 0:
        return members
    return int(max(1, min(members, (fraction * max(free_bytes, 0.0)) // bytes_per_member)))


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

    Speed options (all off by default; outputs agree with the plain path up to the precision used):

    - ``member_batch_size="auto"``: on CUDA, one probe call measures the memory a member costs and the chunk is
      the number of members that fit in 80% of the free memory (:func:`memory_aware_member_chunk`); on CPU all
      members run in one batch.
    - ``autocast="bf16" | "fp16"``: network calls under ``torch.autocast`` on the input's device; the scheduler
      update stays float32.
    - ``channels_last=True``: network and per-step tensors in channels-last memory format (NHWC / NDHWC), which
      tensor cores prefer. This converts the network's parameters in place.
    - ``compile=True``: the per-step network call goes through ``torch.compile`` (compiled once per network and
      cached; ``compile_kwargs`` are passed on). ``cuda_graphs=True`` compiles with ``mode="reduce-overhead"``,
      which captures CUDA graphs: every step has the same shapes, so the launch overhead of small per-step
      networks disappears. It is ignored with a warning on CPU.

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
        member_batch_size: at most this many members per network call; ``None``: all members at once; ``"auto"``:
            memory-aware (see above).
        progress: show a tqdm progress bar over the steps.
        autocast: ``None``, ``"bf16"`` or ``"fp16"``.
        channels_last: use channels-last memory format.
        compile: ``torch.compile`` the per-step network call.
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
        cuda_graphs: compile with CUDA graphs (``mode="reduce-overhead"``); CUDA only.

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
        member_batch_size: int | str | None = None,
        progress: bool = False,
        autocast: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_kwargs: dict[str, Any] | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if isinstance(member_batch_size, str):
            if member_batch_size != "auto":
                raise ValueError(f"member_batch_size must be an int >= 1, None or 'auto', got '{member_batch_size}'.")
        elif member_batch_size is not None and member_batch_size < 1:
            raise ValueError(f"member_batch_size must be an int >= 1, None or 'auto', got {member_batch_size}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.num_samples = num_samples
        self.return_samples = return_samples
        self.seed = seed
        self.eta = eta
        self.member_batch_size = member_batch_size
        self.progress = progress
        self.autocast_dtype = None if autocast is None else look_up_option(autocast, AUTOCAST_DTYPES)
        self.channels_last = channels_last
        self.compile = compile or cuda_graphs
        self.compile_kwargs = dict(compile_kwargs or {})
        self.cuda_graphs = cuda_graphs
        # compiled per-step callables, one per network (weak keys: the inferer never keeps a network alive)
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        #: member chunk size used by the last call (useful with ``member_batch_size="auto"``)
        self.last_member_batch_size: int | None = None

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

    def _members(self, num_samples: int | None) -> int:
        """The call's ensemble size: ``num_samples``, else the inferer's; ``< 1`` raises."""
        if num_samples is None:
            return int(self.num_samples)
        if int(num_samples) < 1:
            raise ValueError(
                f"{type(self).__name__}.sample: num_samples must be >= 1, got {num_samples}; pass None to use the "
                f"inferer's num_samples={self.num_samples}."
            )
        return int(num_samples)

    def _checked_image(self, inputs: Any, network: Any) -> torch.Tensor:
        """
        ``inputs`` as a plain floating tensor in the network's parameter dtype, checked for NaN/Inf (the message names
        the batch items and, for a collated ``MetaTensor``, their files). Integer images raise (see
        :func:`monai_diffseg.utils.check_floating`).
        """
        owner = f"{type(self).__name__}"
        names = batch_item_names(inputs)
        image = convert_to_tensor(inputs, track_meta=False)
        image = check_floating(image, "inputs", owner, _parameter_dtype(_unwrap(network)))
        check_finite(image, "inputs", owner, names)
        return image

    def _base_seed(self, seed: int | None) -> int:
        """The call's base seed: ``seed``, else the inferer's, else one drawn from torch's global RNG."""
        base_seed = seed if seed is not None else self.seed
        return int(torch.randint(0, 2**31 - 1, (1,)).item()) if base_seed is None else base_seed

    def _stochastic(self, scheduler: Scheduler) -> bool:
        return isinstance(scheduler, DDPMScheduler) or (isinstance(scheduler, DDIMScheduler) and self.eta > 0)

    def _autocast(self, device: torch.device) -> Any:
        if self.autocast_dtype is None:
            # leave any caller's autocast (e.g. SupervisedEvaluator(amp=True)) in force
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def _memory_format(self, ndim: int) -> torch.memory_format | None:
        if not self.channels_last:
            return None
        return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)

    def _step_network(self, network: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
        """The callable used at every denoising step: the network itself or its cached ``torch.compile`` d form."""
        if not self.compile or not isinstance(network, nn.Module):
            return network
        kwargs = dict(self.compile_kwargs)
        if self.cuda_graphs:
            if device.type != "cuda":
                warnings.warn("cuda_graphs=True needs a CUDA device; compiling without CUDA graphs.", stacklevel=3)
            else:
                kwargs.setdefault("mode", "reduce-overhead")
        compiled = self._compiled.get(network)
        if compiled is None:
            compiled = torch.compile(network, **kwargs)
            self._compiled[network] = compiled
        return compiled

    def _auto_chunk(
        self,
        step_fn: Callable[..., Any],
        x: torch.Tensor,
        n: int,
        members: int,
        t: torch.Tensor,
        cond_name: str,
        cond_one: Any,
        args: tuple,
        kwargs: dict,
    ) -> int:
        """Measure one member's memory with a probe call (CUDA) and return the member chunk that fits."""
        device = x.device
        if device.type != "cuda" or members == 1:
            return members
        torch.cuda.synchronize(device)
        free, _ = torch.cuda.mem_get_info(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with self._autocast(device):
            step_fn(x[:n], torch.full((n,), int(t), device=device, dtype=torch.long), *args, **{cond_name: cond_one},
                    **kwargs)
        torch.cuda.synchronize(device)
        activations = torch.cuda.max_memory_allocated(device) - before
        conds = cond_one if isinstance(cond_one, tuple) else (cond_one,)
        tiled_condition = sum(c.numel() * c.element_size() for c in conds)
        state = 3 * x[:n].numel() * 4  # x, model output, x0 of one member (float32)
        return memory_aware_member_chunk(members, activations + tiled_condition + state, free)

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

        Raises:
            ValueError: ``num_samples < 1``; NaN/Inf in ``inputs`` (the message names the batch items and, for a
                collated ``MetaTensor``, their files) or in the sampled masks; scheduler timesteps outside
                ``[0, num_train_timesteps - 1]``.
            TypeError: an integer image (e.g. uint8 0-255): scale it in preprocessing. Floating images are cast to
                the network's parameter dtype (float64 -> float32).
        """
        members = self._members(num_samples)
        image = self._checked_image(inputs, network)
        n = image.shape[0]
        base_seed = self._base_seed(seed)
        module = _unwrap(network)  # type: ignore[arg-type]
        out_channels = int(getattr(module, "out_channels", 1))
        device = image.device
        memory_format = self._memory_format(image.ndim)
        if memory_format is not None and isinstance(network, nn.Module):
            network.to(memory_format=memory_format)  # type: ignore[call-overload]
            image = image.contiguous(memory_format=memory_format)

        def fmt(v: torch.Tensor) -> torch.Tensor:
            return v if memory_format is None or v.ndim != image.ndim else v.contiguous(memory_format=memory_format)

        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        num_train = getattr(scheduler, "num_train_timesteps", None)
        check_timesteps(
            scheduler.timesteps,
            num_train_timesteps=None if num_train is None else int(num_train),
            name=f"{type(scheduler).__name__}.timesteps (num_inference_steps={self.num_inference_steps})",
            owner=type(self).__name__,
        )
        if hasattr(scheduler, "alphas_cumprod"):
            scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)

        gens = [torch.Generator(device=device).manual_seed(base_seed + e) for e in range(members)]
        shape = (n, out_channels, *image.shape[2:])
        # member-major layout: row e * N + n is member e of image n (what MedSegDiff.forward expects)
        x = torch.cat([torch.randn(shape, generator=g, device=device) for g in gens], dim=0)

        encode = getattr(module, "encode_condition", None)
        if callable(encode):
            with self._autocast(device):
                cond_name, cond_one = "condition", tuple(fmt(c) for c in encode(image))
        else:
            cond_name, cond_one = "image", image
        step_fn = self._step_network(network, device)  # type: ignore[arg-type]
        timesteps: Sequence[torch.Tensor] = scheduler.timesteps

        if self.member_batch_size == "auto":
            chunk = self._auto_chunk(step_fn, x, n, members, timesteps[0], cond_name, cond_one, args, kwargs)
        else:
            chunk = members if self.member_batch_size is None else min(int(self.member_batch_size), members)
        self.last_member_batch_size = chunk

        def tile(c: torch.Tensor) -> torch.Tensor:
            return fmt(c.repeat(chunk, *([1] * (c.ndim - 1))))

        # condition (or image) tiled to one chunk of members once per call, not at every step; a smaller last
        # chunk takes a leading slice (member-major layout)
        cond_tiled = tuple(tile(c) for c in cond_one) if cond_name == "condition" else tile(cond_one)
        stochastic = self._stochastic(scheduler)

        if self.progress and has_tqdm:
            timesteps = tqdm(timesteps, desc="diffusion sampling")
        x0 = x
        for t in timesteps:
            outputs = []
            for start in range(0, members, chunk):
                xs = fmt(x[start * n : (start + chunk) * n])
                tt = torch.full((xs.shape[0],), int(t), device=device, dtype=torch.long)
                rows = xs.shape[0]
                cond = tuple(c[:rows] for c in cond_tiled) if cond_name == "condition" else cond_tiled[:rows]
                with self._autocast(device):
                    pred = step_fn(xs, tt, *args, **{cond_name: cond}, **kwargs)
                outputs.append(pred.float())
            model_output = torch.cat(outputs, dim=0).contiguous()
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
        per_image = x0.reshape(members, n, *x0.shape[1:]).transpose(0, 1)  # (N, E, C, *S)
        check_finite(
            per_image,
            "the sampled masks",
            type(self).__name__,
            hint="the inputs were finite, so the network returned NaN/Inf while sampling: an overflow under fp16 "
            "autocast (use autocast='bf16' or None) or damaged weights (check the checkpoint).",
        )
        return x0_to_probability(per_image, channel_dim=2).contiguous()

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


class DiffusionSlidingWindowInferer(DiffusionSegmentationInferer):
    """
    Patch-wise ensemble sampling for volumes (or large images) larger than the training patch.

    The image is cut into ``roi_size`` windows by MONAI's :func:`monai.inferers.sliding_window_inference`; for every
    window the whole reverse process runs with **all ensemble members in one batch** and the window's condition
    encoded once (exactly :meth:`DiffusionSegmentationInferer.sample` on the window). The per-member probabilities
    of overlapping windows are blended (``mode``, Gaussian by default), so the output has the same layout as the
    non-windowed inferer and the fusion / uncertainty transforms apply unchanged.

    Window batch ``w`` (numbered over all windows of all images of the call) draws its members' noise from
    generators seeded ``seed + w * E + e``: runs are reproducible and windows are independent. Each window is a
    complete chain, so member ``e`` of two neighbouring windows is not the same sample; in overlaps their probabilities are blended, which is what the fused mask needs.

    Args:
        scheduler: as in :class:`DiffusionSegmentationInferer`.
        roi_size: window size, e.g. ``(96, 96, 96)``; must suit the network (divisible by its ``size_divisor``).
        sw_batch_size: windows sampled together (each brings ``E`` members).
        overlap: window overlap fraction.
        mode: blending, ``"gaussian"`` or ``"constant"``.
        sw_device: device of the windows (``None``: the input's).
        device: device of the stitched output (``None``: the input's); ``"cpu"`` keeps large volumes off the GPU.
        progress: a progress bar over the windows.
        kwargs: the sampling options of :class:`DiffusionSegmentationInferer` (``num_inference_steps``,
            ``num_samples``, ``return_samples``, ``seed``, ``eta``, ``member_batch_size``, ``autocast``,
            ``channels_last``, ``compile``, ``compile_kwargs``, ``cuda_graphs``).

    Shapes:
        inputs ``(N, C_in, *S)`` with any ``S`` -> ``(N, C, *S)`` or ``(N, E, C, *S)``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        **kwargs: Any,
    ) -> None:
        # the per-step progress bar of the parent would restart in every window: show one over windows instead
        super().__init__(scheduler, progress=False, **kwargs)
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        self.roi_size = roi_size
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.mode = mode
        self.sw_device = sw_device
        self.device = device
        self.window_progress = progress

    def sample(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        num_samples: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """
        Draw the ensemble window by window and stitch it.

        Returns:
            ``(N, E, C, *S)`` per-member foreground probabilities.
        """
        members = self._members(num_samples)
        image = self._checked_image(inputs, network)
        base_seed = self._base_seed(seed)
        window = [0]
        parent_sample = super().sample

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            # one full reverse process per window batch; all members of every window in one batch
            samples = parent_sample(patch, network, *args, num_samples=members, seed=base_seed + window[0] * members,
                                    **kwargs)
            window[0] += 1
            return samples.flatten(1, 2)  # (B_w, E * C, *roi)

        stitched = sliding_window_inference(
            image,
            self.roi_size,
            self.sw_batch_size,
            predictor,
            overlap=self.overlap,
            mode=self.mode,
            sw_device=self.sw_device,
            device=self.device,
            progress=self.window_progress,
        )
        assert isinstance(stitched, torch.Tensor)
        return stitched.reshape(image.shape[0], members, -1, *stitched.shape[2:])
