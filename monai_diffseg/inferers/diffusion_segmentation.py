# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Inferers for mask-diffusion segmentation: the training forward and the batched-ensemble sampler."""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler
from monai.utils import convert_to_tensor, look_up_option, optional_import

from monai_diffseg.utils import (
    as_flag,
    batch_item_names,
    check_finite,
    check_floating,
    check_timesteps,
    diffusion_to_image,
    unwrap_network,
)

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "DiffusionSegmentationInferer",
    "DiffusionSlidingWindowInferer",
    "DiffusionSegmentationTrainInferer",
    "memory_aware_member_chunk",
    "row_generators",
    "prediction_to_x0",
    "x0_to_probability",
]

#: accepted ``autocast`` values -> dtype
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: the keyword arguments the sampler gives ``scheduler.step`` where its signature takes them
STEP_EXTRAS = ("eta", "generator", "next_timestep")
#: accepted ``init`` values of the sampler: where the members start
INIT_MODES = ("noise", "anchor")


def memory_aware_member_chunk(members: int, bytes_per_member: float, free_bytes: float, fraction: float = 0.8) -> int:
    """
    How many of ``members`` (ensemble size ``E``) fit in one network call: ``min(E, floor(fraction * free_bytes /
    bytes_per_member))``, at least 1; ``bytes_per_member``: device memory a member adds to a denoising call
    (activations + tiled condition); ``free_bytes``: free before it; ``fraction``: the share the sampler may use.
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if bytes_per_member <= 0:
        return members
    return int(max(1, min(members, (fraction * max(free_bytes, 0.0)) // bytes_per_member)))


def x0_to_probability(x0: torch.Tensor, channel_dim: int = 1, multi_label: bool = False) -> torch.Tensor:
    """
    Map a predicted clean mask ``x0`` ``(..., C, *S)`` in ``[-1, 1]`` to foreground probabilities: ``(x0 + 1) / 2``,
    renormalised to sum to 1 over ``channel_dim`` for several (one-hot) channels (so argmax and thresholding both work);
    ``multi_label``: the channels are independent structures (e.g. nested optic disc and cup), never renormalised.
    """
    prob = diffusion_to_image(x0.clamp(-1.0, 1.0))
    if prob.shape[channel_dim] > 1 and not multi_label:
        total = prob.sum(dim=channel_dim, keepdim=True)
        # every channel at -1 (no class claims the pixel): uniform rather than all-zero probabilities
        uniform = torch.full_like(prob, 1.0 / prob.shape[channel_dim])
        prob = torch.where(total > 1e-6, prob / total.clamp_min(1e-6), uniform)
    return prob


def prediction_to_x0(
    output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, scheduler: Scheduler, clip: bool = True
) -> torch.Tensor:
    """
    The clean-mask estimate ``x0`` implied by a network ``output`` ``(B, C, *S)`` for ``x_t`` at ``timesteps``
    ``(B,)``, read by the scheduler's ``prediction_type``: ``"sample"``: the output itself; ``"epsilon"``:
    ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``; ``"v_prediction"``: ``sqrt(a_t) x_t - sqrt(1 - a_t) v``
    (``a_t``: ``scheduler.alphas_cumprod``). ``clip``: clamp to the mask range ``[-1, 1]``.
    """
    kind = look_up_option(str(getattr(scheduler, "prediction_type", "")), ("epsilon", "sample", "v_prediction"))
    if kind == "sample":
        x0 = output
    else:
        a = scheduler.alphas_cumprod.to(x_t.device)[timesteps.long()].float()  # type: ignore[attr-defined]
        a = a.reshape(-1, *([1] * (x_t.ndim - 1)))
        if kind == "epsilon":
            x0 = (x_t - (1 - a).sqrt() * output) / a.sqrt()
        else:
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
    return x0.clamp(-1.0, 1.0) if clip else x0


class DiffusionSegmentationTrainInferer(Inferer):
    """
    Training-time "inferer" for ``SupervisedTrainer`` on what :class:`monai_diffseg.engines.MaskDiffusionPrepareBatch`
    returns (``x_t``; ``timesteps``/``image`` keywords): one ``forward`` call with gradients, so
    ``DistributedDataParallel`` syncs them. Returns ``{"pred": (B, C, *S)}`` plus ``"anchor": (N, C, *S)`` logits when
    ``anchor`` is set and the network has an anchor head (for the auxiliary loss).

    Self-conditioning (Chen et al., "Analog Bits", arXiv:2208.04202), for a network with ``self_condition=True``
    (e.g. :class:`monai_diffseg.networks.nets.MedSegDiff`): with probability ``self_condition_probability`` per batch
    a first pass without gradients (on the unwrapped network, self-condition zeros) gives the estimate
    ``x0_hat`` (:func:`prediction_to_x0`), passed detached as ``x_self_cond`` to the trained pass; otherwise the
    trained pass gets zeros, as the sampler's first step does. The draw uses torch's global RNG (``set_determinism``).

    Args:
        anchor: return the anchor logits (when the network has an anchor head).
        scheduler: the training noise scheduler (its ``prediction_type`` and ``alphas_cumprod`` turn the first
            pass's output into ``x0_hat``); required for a self-conditioned network.
        self_condition_probability: share of batches trained with a self-condition (0.5 in the paper).
    """

    def __init__(
        self, anchor: bool = True, scheduler: Scheduler | None = None, self_condition_probability: float = 0.5
    ) -> None:
        super().__init__()
        if not 0.0 <= self_condition_probability <= 1.0:
            raise ValueError(
                f"self_condition_probability must be in [0, 1], got {self_condition_probability} (0.5 in Analog Bits)."
            )
        self.anchor = anchor
        self.scheduler = scheduler
        self.self_condition_probability = float(self_condition_probability)

    def self_condition(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``x_self_cond`` for this batch: ``None`` (zeros) or the detached no-grad estimate ``x0_hat``."""
        module = unwrap_network(network)
        if not getattr(module, "self_condition", False):
            return None
        if self.scheduler is None:
            raise ValueError(
                f"{type(self).__name__}: the network has self_condition=True, so the inferer needs the training "
                'noise scheduler (`scheduler`, e.g. "@scheduler" in train.json) to turn its first pass into x0.'
            )
        if float(torch.rand(())) >= self.self_condition_probability:
            return None
        with torch.no_grad():
            first = module(inputs, *args, **kwargs)
        return prediction_to_x0(first.float(), inputs.float(), kwargs["timesteps"], self.scheduler).detach()

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        if "timesteps" not in kwargs or "image" not in kwargs:
            raise ValueError(
                "DiffusionSegmentationTrainInferer needs `timesteps` and `image` keyword arguments; use it with "
                "monai_diffseg.engines.MaskDiffusionPrepareBatch as the trainer's prepare_batch."
            )
        x_self_cond = self.self_condition(inputs, network, *args, **kwargs)
        if x_self_cond is not None:
            kwargs = {**kwargs, "x_self_cond": x_self_cond}
        if self.anchor and getattr(unwrap_network(network), "anchor_head", None) is not None:
            pred, anchor = network(inputs, *args, return_anchor=True, **kwargs)
            return {"pred": pred, "anchor": anchor}
        return {"pred": network(inputs, *args, **kwargs)}


def row_generators(
    seed: int | Sequence[int], n: int, members: int, device: torch.device | str | None = None
) -> list[torch.Generator]:
    """
    One generator per ensemble row in member-major order (row ``e * n + i`` is member ``e`` of image ``i``), seeded
    ``seed_i + e`` with ``seed_i = seed`` for every image, or ``seed[i]``: an image's noise depends on its seed and
    member only, never on its batch position, batch size or rank (sharded and batched runs agree).
    """
    seeds = [int(seed)] * n if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"row_generators: {len(seeds)} seeds given for a batch of {n} images; give one per image.")
    return [torch.Generator(device=device).manual_seed(s + e) for e in range(members) for s in seeds]


class DiffusionSegmentationInferer(Inferer):
    """
    Sample segmentation masks from a mask-diffusion model (the MONAI ``inferer(inputs, network)`` contract): the
    image condition is encoded once (``network.encode_condition`` when the network has it, else the image is passed to
    every step); member ``e`` of every image starts from noise of its own generator seeded ``seed + e`` (a batched
    ensemble equals a loop of single-member calls with seeds ``seed, seed + 1, ...``, and an image's samples do not
    depend on the other images of its batch, its position there or the rank that runs it: :func:`row_generators`);
    all members run the scheduler's reverse process in one batch (or chunks of ``member_batch_size``); the scheduler's
    final ``x_0`` (never the raw network output) is mapped to probabilities.

    Schedulers: every MONAI scheduler (DDPM, DDIM, PNDM, RFlow) and
    :class:`monai_diffseg.schedulers.DPMSolverMultistepScheduler`. ``scheduler.step`` gets the extras its signature
    takes: ``eta`` (DDIM), ``generator`` (DDPM, DDIM: one per member, so results do not depend on batching),
    ``next_timestep`` (RFlow; the last step goes to 0). One requiring any other argument is rejected at construction.

    Speed options (``member_batch_size`` on) give the same outputs up to the precision used; only what
    ``channels_last`` and ``compile`` build per network is cached (keeping that network alive).

    Args:
        scheduler: a scheduler as above, ``prediction_type`` as in training; copied per call, never mutated.
        num_inference_steps: reverse steps (e.g. 1000 for DDPM, 10-50 for DDIM).
        num_samples: ensemble size ``E``.
        return_samples: return the per-member probabilities ``(N, E, C, *S)`` instead of their ``(N, C, *S)`` mean.
        seed: base seed of the member generators; ``None`` draws one from torch's global RNG.
        eta: DDIM stochasticity (0 = deterministic DDIM).
        member_batch_size: at most this many members per network call; ``None``: all; ``"auto"``: on CUDA a probe call
            measures a member's memory, the chunk fits 80% of the free memory (:func:`memory_aware_member_chunk`).
        progress: show a tqdm progress bar over the steps.
        autocast: ``None``, ``"bf16"`` or ``"fp16"``: network calls under ``torch.autocast`` (scheduler in float32).
        channels_last: per-step tensors in NHWC / NDHWC and a channels-last copy of the (unwrapped) network, given its
            weights and train/eval mode at every call (the caller's network is never converted).
        compile: ``torch.compile`` the per-step network call.
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
        cuda_graphs: compile with ``mode="reduce-overhead"`` (CUDA graphs); ignored with a warning on CPU.
        multi_label: the ``C > 1`` channels are independent (multi-label) masks, e.g. nested optic disc and cup: each
            is ``(x0 + 1) / 2`` on its own; default: one-hot classes renormalised to sum to 1 (:func:`x0_to_probability`).
        init: where the members start. ``"noise"``: pure noise at the scheduler's first timestep (the full reverse
            process). ``"anchor"`` (SDEdit-style truncated reverse process, Meng et al. 2022, arXiv:2108.01073): from
            the network's anchor head (MedSegDiff's condition branch, :meth:`anchor`), its probability (sigmoid; softmax
            over one-hot classes) as ``x0 = 2 p - 1`` noised to ``t_start`` with each member's own noise
            (``scheduler.add_noise``); only the scheduler's timesteps ``<= t_start`` run, so ``num_inference_steps=20,
            t_start=450`` costs 10 network evaluations per member (DDIM/DDPM schedulers; DDIM with 1000 training
            steps: ``950, 900, ..., 0``).
        t_start: the training timestep ``[0, T - 1]`` the anchor start is noised to (needed for ``init="anchor"``);
            the reverse process starts at the largest scheduler timestep ``<= t_start`` (at ``t_start`` itself, one
            step, when the grid has none, e.g. ``num_inference_steps=1``).
        anchor_weight: ``w`` in ``[0, 1]``: the anchor head as a prior in fusion: every member's probability becomes
            ``(1 - w) p_e + w p_anchor``, so mean fusion gives ``(1 - w) mean_e(p_e) + w p_anchor`` (``0``: off);
            the members' spread, hence the variance-type uncertainty maps, shrink by ``1 - w``.

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
        multi_label: bool = False,
        init: str = "noise",
        t_start: int | None = None,
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.init = look_up_option(init, INIT_MODES)
        if self.init == "anchor":
            if t_start is None or int(t_start) < 0:
                raise ValueError(
                    f"init='anchor' needs t_start >= 0 (the training timestep the anchor's mask is noised to, e.g. "
                    f"450 with num_inference_steps=20), got {t_start!r}."
                )
            if not isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
                raise ValueError(
                    f"init='anchor' starts the reverse process part-way, which {type(scheduler).__name__} does not "
                    "support here; use monai.networks.schedulers.DDIMScheduler or DDPMScheduler, or init='noise'."
                )
        if not 0.0 <= float(anchor_weight) <= 1.0:
            raise ValueError(f"anchor_weight must be in [0, 1] (0: no anchor prior), got {anchor_weight}.")
        self.t_start = None if t_start is None else int(t_start)
        self.anchor_weight = float(anchor_weight)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if not (member_batch_size in (None, "auto") or (isinstance(member_batch_size, int) and member_batch_size > 0)):
            raise ValueError(f"member_batch_size must be an int >= 1, None or 'auto', got {member_batch_size!r}.")
        after = list(inspect.signature(scheduler.step).parameters.values())[3:]  # after (model_output, t, sample)
        required = [p.name for p in after if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if any(name not in STEP_EXTRAS for name in required):
            raise ValueError(
                f"{type(scheduler).__name__}.step requires {required} besides (model_output, timestep, sample); "
                f"{type(self).__name__} passes only {list(STEP_EXTRAS)} (where step takes them). Use a MONAI scheduler "
                "(DDPM, DDIM, PNDM, RFlow) or monai_diffseg.schedulers.DPMSolverMultistepScheduler."
            )
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.num_samples = num_samples
        self.return_samples = return_samples
        self.seed = seed
        self.eta = eta
        self.member_batch_size = member_batch_size
        self.progress = as_flag(progress, "progress")  # bundle options may arrive as "false" from the CLI
        self.autocast_dtype = None if autocast is None else look_up_option(autocast, AUTOCAST_DTYPES)
        self.channels_last = as_flag(channels_last, "channels_last")
        self.compile = as_flag(compile, "compile") or as_flag(cuda_graphs, "cuda_graphs")
        self.compile_kwargs = dict(compile_kwargs or {})
        self.cuda_graphs = as_flag(cuda_graphs, "cuda_graphs")
        self.multi_label = multi_label
        # per network: (the module the steps run: the network or its channels-last copy, its step callable)
        self._prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        samples = self.sample(inputs, network, *args, **kwargs)
        out = samples if self.return_samples else samples.mean(dim=1)
        if isinstance(inputs, MetaTensor) and not self.return_samples:
            # the image's batched meta, applied_operations and is_batch, so Invertd / SaveImaged can place it
            out = MetaTensor(out).copy_meta_from(inputs)
        return out

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
        Draw the ensemble: ``(N, E, C, *S)`` per-member foreground probabilities.

        Args:
            inputs: images ``(N, C_in, *S)``; floating ones are cast to the network's parameter dtype.
            network: the denoiser, called as ``network(x_t, timesteps, condition=...)`` (or ``image=...``).
            args, kwargs: extra arguments passed to every network call.
            num_samples, seed: overrides of the ensemble size and base seed.

        Raises:
            ValueError: ``num_samples < 1``; NaN/Inf in ``inputs`` (naming the batch items and, for a collated
                ``MetaTensor``, their files) or in the sampled masks; timesteps outside ``[0, T - 1]``.
            TypeError: an integer image (e.g. uint8 0-255): scale it in preprocessing.
        """
        members, image, base_seed = self._prepare(inputs, network, num_samples, seed)
        return self._draw(image, network, members, base_seed, args, kwargs)

    def _draw(
        self,
        image: torch.Tensor,
        network: Any,
        members: int,
        base_seed: int | Sequence[int],
        args: tuple,
        kwargs: dict,
    ) -> Any:
        """
        The reverse process for checked inputs: ``(N, E, C, *S)`` probabilities (see :meth:`sample`); ``base_seed``: one
        for every image, or one per image (member ``e`` of image ``i`` draws from a generator seeded ``seed_i + e``).
        """
        n, device = image.shape[0], image.device
        scheduler = copy.deepcopy(self.scheduler)  # the call's timesteps on the image's device
        extra = inspect.signature(scheduler.set_timesteps).parameters
        size = {"input_img_size_numel": int(image.shape[2:].numel())} if "input_img_size_numel" in extra else {}
        scheduler.set_timesteps(self.num_inference_steps, device=device, **size)  # RFlow scales by image size
        # RFlow starts at t = T itself (pure noise): only the lower bound applies there
        num_t = None if isinstance(scheduler, RFlowScheduler) else int(scheduler.num_train_timesteps)
        name = f"{type(scheduler).__name__}.timesteps (num_inference_steps={self.num_inference_steps})"
        check_timesteps(scheduler.timesteps, None, num_t, name, type(self).__name__)
        if hasattr(scheduler, "alphas_cumprod"):
            scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
        timesteps = scheduler.timesteps.tolist()
        gens = row_generators(base_seed, n, members, device)
        shape = (n, int(getattr(unwrap_network(network), "out_channels", 1)), *image.shape[2:])
        # member-major layout: row e * N + n is member e of image n (what MedSegDiff.forward expects)
        x = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device) for g in gens], dim=0)
        encoded = self._encode(network, image)
        anchor = self._anchor_probability(network, encoded) if self.init == "anchor" or self.anchor_weight else None
        if self.init == "anchor":
            x, timesteps = self._anchor_start(scheduler, anchor, x, timesteps)
        denoise = self._denoiser(network, image, x, timesteps[0], args, kwargs, encoded)
        step = self._stepper(scheduler, n, gens)
        steps = zip(timesteps, timesteps[1:] + [0])  # (t, next t); RFlow's step size needs the next t
        if self.progress and has_tqdm:
            steps = tqdm(steps, total=len(timesteps), desc="diffusion sampling")
        # self-conditioning: the network also sees the previous step's x0 estimate (zeros at the first step)
        self_cond = bool(getattr(unwrap_network(network), "self_condition", False))
        x0 = torch.zeros_like(x) if self_cond else x
        for t, next_t in steps:
            x, x0 = step(denoise(x, t, x0 if self_cond else None), t, next_t, x)
        per_image = x0.reshape(members, n, *x0.shape[1:]).transpose(0, 1)  # (N, E, C, *S)
        check_finite(
            per_image,
            "the sampled masks",
            type(self).__name__,
            hint="the inputs were finite, so the network returned NaN/Inf while sampling: an overflow under fp16 "
            "autocast (use autocast='bf16' or None) or damaged weights (check the checkpoint).",
        )
        prob = x0_to_probability(per_image, channel_dim=2, multi_label=self.multi_label)
        if anchor is not None and self.anchor_weight > 0:  # the anchor head as a prior of every member
            prob = (1.0 - self.anchor_weight) * prob + self.anchor_weight * anchor[:, None]
        return prob.contiguous()

    def _encode(self, network: Any, image: torch.Tensor) -> tuple[str, tuple[torch.Tensor, ...]]:
        """
        The call's condition as ``(keyword, tensors)``: ``("condition", network.encode_condition(image))`` when the
        network has it (once per call), else ``("image", (image,))``; channels-last when set.
        """
        memory_format = self._memory_format(image.ndim)

        def fmt(v: torch.Tensor) -> torch.Tensor:
            return v if memory_format is None or v.ndim != image.ndim else v.contiguous(memory_format=memory_format)

        encode = getattr(unwrap_network(network), "encode_condition", None)
        if not callable(encode):
            return "image", (fmt(image),)
        with self._autocast(image.device):
            return "condition", tuple(fmt(c) for c in encode(fmt(image)))

    def _anchor_probability(self, network: Any, encoded: tuple[str, tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """
        The anchor head's foreground probability ``(N, C, *S)`` (float32) from the encoded condition: sigmoid per
        channel (one channel or ``multi_label``), softmax over one-hot classes, as the anchor was trained.
        """
        module = unwrap_network(network)
        if encoded[0] != "condition" or getattr(module, "anchor_head", None) is None:
            raise ValueError(
                f"{type(self).__name__}: init='anchor' / anchor_weight > 0 need a network with an anchor head "
                f"(MedSegDiff(anchor_head=True): encode_condition + anchor); {type(module).__name__} has none. Use "
                "init='noise' and anchor_weight=0."
            )
        with self._autocast(encoded[1][0].device):
            logits = module.anchor(encoded[1]).float()
        if logits.shape[1] > 1 and not self.multi_label:
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)

    def _anchor_start(
        self, scheduler: Scheduler, anchor: torch.Tensor, noise: torch.Tensor, timesteps: list
    ) -> tuple[torch.Tensor, list]:
        """
        SDEdit start: the anchor's ``x0 = 2 p - 1`` ``(N, C, *S)``, tiled member-major to ``noise``'s ``(E * N, C,
        *S)`` rows, noised by ``scheduler.add_noise`` with each row's own noise to the first timestep ``<= t_start``
        (``t_start`` itself, one step, when the grid has none); returns ``(x_t, the timesteps from there on)``.
        """
        # a coarse grid may have no timestep <= t_start (MONAI's 1-step DDIM grid is [999]): one step from t_start
        kept = [t for t in timesteps if t <= self.t_start] or [self.t_start]
        members = noise.shape[0] // anchor.shape[0]
        x0 = (2.0 * anchor - 1.0).repeat(members, *([1] * (anchor.ndim - 1))).to(noise.dtype)
        t = torch.full((noise.shape[0],), int(kept[0]), device=noise.device, dtype=torch.long)
        return scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t), kept

    def _prepare(self, inputs: Any, network: Any, num_samples: int | None, seed: int | None) -> tuple:
        """
        The call's ``(members, image, base_seed)``: ``num_samples`` (``< 1`` raises) else the inferer's; ``inputs`` as
        a plain tensor in the network's floating parameter dtype, checked (see :meth:`sample`); ``seed``, else the
        inferer's, else one drawn from torch's global RNG.
        """
        owner = type(self).__name__
        if num_samples is not None and int(num_samples) < 1:
            raise ValueError(
                f"{owner}.sample: num_samples must be >= 1, got {num_samples}; pass None to use the "
                f"inferer's num_samples={self.num_samples}."
            )
        module = unwrap_network(network)
        params = module.parameters() if isinstance(module, nn.Module) else ()
        dtype = next((p.dtype for p in params if p.is_floating_point()), None)
        image = check_floating(convert_to_tensor(inputs, track_meta=False), "inputs", owner, dtype)
        check_finite(image, "inputs", owner, batch_item_names(inputs))
        base_seed = seed if seed is not None else self.seed
        base_seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if base_seed is None else base_seed
        return int(self.num_samples if num_samples is None else num_samples), image, base_seed

    def _autocast(self, device: torch.device) -> Any:
        if self.autocast_dtype is None:
            # leave any caller's autocast (e.g. SupervisedEvaluator(amp=True)) in force
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def _memory_format(self, ndim: int) -> torch.memory_format | None:
        return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim) if self.channels_last else None

    def _step_network(self, network: Callable[..., Any], image: torch.Tensor) -> Callable[..., Any]:
        """The callable of every denoising step: the network, or its cached channels-last copy and/or compiled form."""
        memory_format = self._memory_format(image.ndim)
        if not isinstance(network, nn.Module) or (memory_format is None and not self.compile):
            return network
        kwargs = dict(self.compile_kwargs)
        if self.cuda_graphs:
            if image.device.type != "cuda":
                warnings.warn("cuda_graphs=True needs a CUDA device; compiling without CUDA graphs.", stacklevel=3)
            else:
                kwargs.setdefault("mode", "reduce-overhead")
        if network not in self._prepared:
            module = network
            if memory_format is not None:
                module = copy.deepcopy(unwrap_network(network)).to(memory_format=memory_format)
            self._prepared[network] = (module, torch.compile(module, **kwargs) if self.compile else module)
        module, step_fn = self._prepared[network]
        if module is not network:  # the channels-last copy follows the caller's network
            source = unwrap_network(network)
            module.to(image.device).load_state_dict(source.state_dict())
            module.train(source.training)
        return step_fn

    def _denoiser(
        self,
        network: Callable[..., Any],
        image: torch.Tensor,
        x: torch.Tensor,
        t0: float,
        args: tuple,
        kwargs: dict,
        encoded: tuple[str, tuple[torch.Tensor, ...]] | None = None,
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """
        ``denoise(x, t)``: the float32 network output for all members of ``x`` ``(E * N, C, *S)`` at step ``t``. Set
        up once per call: the step network, the condition (encoded, tiled to one member chunk), the chunk (``t0``:
        the first step, for the ``"auto"`` probe), ``autocast`` and ``channels_last``. ``encoded``: the call's
        :meth:`_encode` result when already computed.
        """
        n, device, memory_format = image.shape[0], image.device, self._memory_format(image.ndim)
        members = x.shape[0] // n

        def fmt(v: torch.Tensor) -> torch.Tensor:
            return v if memory_format is None or v.ndim != image.ndim else v.contiguous(memory_format=memory_format)

        step_fn = self._step_network(network, image)
        name, cond = self._encode(network, image) if encoded is None else encoded

        def call(xs: torch.Tensor, t: float, c: tuple[torch.Tensor, ...], sc: Any = None) -> torch.Tensor:
            dtype = torch.long if isinstance(t, int) else torch.float  # RFlow's continuous steps are float
            steps = torch.full((xs.shape[0],), t, device=device, dtype=dtype)
            condition = {name: c if name == "condition" else c[0]}
            if sc is not None:  # self-conditioning: the previous x0 estimate of these members
                condition["x_self_cond"] = fmt(sc)
            with self._autocast(device):
                return step_fn(fmt(xs), steps, *args, **condition, **kwargs)

        chunk = members if self.member_batch_size in (None, "auto") else min(int(self.member_batch_size), members)
        if self.member_batch_size == "auto" and device.type == "cuda" and members > 1:
            # the chunk that fits: a probe call on one member measures its memory
            torch.cuda.synchronize(device)
            free, _ = torch.cuda.mem_get_info(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            call(x[:n], t0, cond)
            torch.cuda.synchronize(device)
            activations = torch.cuda.max_memory_allocated(device) - before
            tiled_condition = sum(c.numel() * c.element_size() for c in cond)
            state = 3 * x[:n].numel() * 4  # x, model output, x0 of one member (float32)
            chunk = memory_aware_member_chunk(members, activations + tiled_condition + state, free)
        # tiled to one chunk of members once per call, not at every step; a smaller last chunk takes a leading slice
        tiled = tuple(fmt(c.repeat(chunk, *([1] * (c.ndim - 1)))) for c in cond)

        def denoise(x: torch.Tensor, t: float, x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
            rows = [slice(start * n, (start + chunk) * n) for start in range(0, members, chunk)]
            outputs = [
                call(x[r], t, tuple(c[: x[r].shape[0]] for c in tiled), None if x_self_cond is None else x_self_cond[r])
                for r in rows
            ]
            outputs = [o.float() for o in outputs]
            return torch.cat(outputs, dim=0).contiguous()

        return denoise

    def _stepper(
        self, scheduler: Scheduler, n: int, gens: Sequence[torch.Generator]
    ) -> Callable[[torch.Tensor, float, float, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """
        ``step(model_output, t, next_t, x) -> (x_prev, x0)`` with the :data:`STEP_EXTRAS` ``scheduler.step`` takes
        (``x0``: ``x_prev`` for a scheduler without it); stochastic ones step row by row (member ``e`` of image ``i``)
        with the row's generator ``gens[e * n + i]``.
        """
        accepted = inspect.signature(scheduler.step).parameters
        stochastic = isinstance(scheduler, DDPMScheduler) or (isinstance(scheduler, DDIMScheduler) and self.eta > 0)

        def one(out: torch.Tensor, t: float, next_t: float, x: torch.Tensor, gen: Any) -> tuple:
            extras = {"eta": self.eta, "generator": gen, "next_timestep": next_t}
            res = scheduler.step(out, t, x, **{k: v for k, v in extras.items() if k in accepted})
            prev, x0 = (res[0], res[1] if len(res) > 1 else None) if isinstance(res, tuple) else (res, None)
            return prev, prev if x0 is None else x0

        def step(out: torch.Tensor, t: float, next_t: float, x: torch.Tensor) -> tuple:
            if not stochastic:
                return one(out, t, next_t, x, None)
            rows = [one(out[r : r + 1], t, next_t, x[r : r + 1], g) for r, g in enumerate(gens)]
            return torch.cat([r[0] for r in rows], dim=0), torch.cat([r[1] for r in rows], dim=0)

        return step


class DiffusionSlidingWindowInferer(DiffusionSegmentationInferer):
    """
    Patch-wise ensemble sampling for images larger than the training patch, ``(N, C_in, *S)`` with any ``S``: MONAI's
    :func:`monai.inferers.sliding_window_inference` runs :meth:`DiffusionSegmentationInferer.sample` (all members in
    one batch) on every ``roi_size`` window and blends the per-member probabilities of overlapping windows, so the
    output has the layout of the non-windowed inferer. Window ``w`` (numbered over all windows of the call) seeds its
    members ``seed + w * E + e``: reproducible, independent windows, whatever ``sw_batch_size`` (with one image per
    call, as the bundles run, an image's samples do not depend on the other images of the data list).

    Args:
        scheduler, kwargs: as in :class:`DiffusionSegmentationInferer`.
        roi_size: window size, e.g. ``(96, 96, 96)``, divisible by the network's ``size_divisor``.
        sw_batch_size: windows sampled together (each brings ``E`` members).
        overlap: window overlap fraction.
        mode: blending, ``"gaussian"`` or ``"constant"``.
        sw_device: device of the windows (``None``: the input's).
        device: device of the stitched output (``None``: the input's); ``"cpu"`` keeps large volumes off the GPU.
        progress: a progress bar over the windows.
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
        self.window_progress = as_flag(progress, "progress")  # bundle options may arrive as "false" from the CLI

    def _draw(self, image: torch.Tensor, network: Any, members: int, base_seed: Any, args: tuple, kwargs: dict) -> Any:
        """:meth:`DiffusionSegmentationInferer.sample`, window by window, stitched: ``(N, E, C, *S)``."""
        window = [0]

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            # window w of the call (counted over all window batches) seeds its members base_seed + w * E + e
            seeds = [base_seed + (window[0] + w) * members for w in range(patch.shape[0])]
            window[0] += patch.shape[0]
            return self._draw_windows(patch, network, members, seeds, args, kwargs).flatten(1, 2)  # (B_w, E * C, *roi)

        stitched = self._stitch(image, predictor, network)
        assert isinstance(stitched, torch.Tensor)
        return stitched.reshape(image.shape[0], members, -1, *stitched.shape[2:])

    def _draw_windows(
        self, windows: torch.Tensor, network: Any, members: int, seeds: list[int], args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """
        One reverse process for all members of a window batch ``(B_w, C_in, *roi)``, window ``b`` seeded ``seeds[b]``:
        ``(B_w, E, C, *roi)`` probabilities.
        """
        return super()._draw(windows, network, members, seeds, args, kwargs)

    def _stitch(self, image: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor], network: Any) -> Any:
        """``predictor`` ``(B_w, C_in, *roi) -> (B_w, E * C, *roi)`` over the windows of ``image``, blended."""
        return sliding_window_inference(
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
