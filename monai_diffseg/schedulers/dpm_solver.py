# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Multistep DPM-Solver++ scheduler (data-prediction ODE solver) on top of MONAI's noise schedules."""

from __future__ import annotations

import math

import torch
from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

from monai_diffseg.utils import look_up_named_option

__all__ = ["DPMSolverMultistepScheduler"]


class DPMSolverMultistepScheduler(Scheduler):
    """
    Deterministic multistep DPM-Solver++ sampler (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", arXiv:2211.01095, Algorithm 2 and App. B).

    It integrates the probability-flow ODE of the data prediction ``x0`` in log-SNR time ``lambda_t =
    log(alpha_t / sigma_t)`` (``alpha_t = sqrt(alphas_cumprod[t])``, ``sigma_t = sqrt(1 - alphas_cumprod[t])``): the
    linear part exactly, the model part with a multistep polynomial in ``lambda`` of the previous ``x0``
    predictions: 1st (DDIM, eta 0), 2nd ("2M") and 3rd ("3M") order. As every update is built from ``x0``, ``x0`` can
    be clipped to ``[-1, 1]`` (what masks want) or dynamically thresholded first; the final step goes to
    ``alphas_cumprod = 1`` and returns the (clipped) ``x0`` itself.

    Stateful: after :meth:`set_timesteps`, call :meth:`step` once per timestep of ``self.timesteps``, in order, for the
    whole batch (the previous ``x0`` and ``lambda`` values are the multistep history, reset by :meth:`set_timesteps` or
    by stepping the first timestep again).

    Args:
        num_train_timesteps: number of diffusion steps used to train the model (``T``).
        schedule: member of ``NoiseSchedules`` (e.g. ``"linear_beta"``, ``"cosine"``).
        prediction_type: what the network predicts: ``"epsilon"``, ``"sample"`` (``x0``) or ``"v_prediction"``.
        solver_order: multistep order, 1 (DDIM with eta 0), 2 or 3.
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen dynamic thresholding of ``x0`` (before
            ``clip_sample``) at ``s``: the per-sample ``dynamic_thresholding_ratio`` quantile of ``|x0|``, at most
            ``sample_max_value``.
        clip_sample, clip_sample_min, clip_sample_max: clamp ``x0`` to ``[clip_sample_min, clip_sample_max]``.
        lower_order_final: lower the order near the end, which stabilises few-step sampling: with fewer than 15
            inference steps the order is at most the number of remaining steps, and the step into timestep 0 (whose
            log-SNR increment is several times the previous one on linear grids) is always first order.
        schedule_args: arguments passed to the schedule function.
    """

    #: ``lower_order_final`` applies when there are fewer inference steps than this.
    lower_order_final_max_steps: int = 15

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = DDPMPredictionType.EPSILON,
        solver_order: int = 2,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        clip_sample: bool = True,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        lower_order_final: bool = True,
        **schedule_args,
    ) -> None:
        if int(num_train_timesteps) < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}.")
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        self.prediction_type = look_up_named_option("prediction_type", prediction_type, DDPMPredictionType)
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}.")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {dynamic_thresholding_ratio}.")
        if sample_max_value < 1.0:
            raise ValueError(f"sample_max_value must be >= 1, got {sample_max_value}.")
        if clip_sample_min >= clip_sample_max:
            raise ValueError(f"clip_sample_min must be < clip_sample_max, got {clip_sample_min} >= {clip_sample_max}.")
        self.solver_order = int(solver_order)
        self.thresholding = bool(thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_min = float(clip_sample_min)
        self.clip_sample_max = float(clip_sample_max)
        self.lower_order_final = bool(lower_order_final)
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """
        Reset the multistep history and set ``self.timesteps`` (on ``device``) to the strictly decreasing grid
        ``round(linspace(T - 1, 0, num_inference_steps))`` (deduplicated), ``1 <= num_inference_steps <= T``; the step
        after its last timestep goes to ``alphas_cumprod = 1``.
        """
        n = int(num_inference_steps)
        if n < 1 or n > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}."
            )
        t_max = self.num_train_timesteps - 1
        grid = torch.unique_consecutive(torch.linspace(t_max, 0, n, dtype=torch.float64).round().long())
        self.timesteps = grid.to(device)
        self.num_inference_steps = int(self.timesteps.numel())
        self._reset_history()

    def _reset_history(self) -> None:
        self._x0_history: list[torch.Tensor] = []
        self._lambda_history: list[float] = []
        self._step_index = 0

    def _alpha_sigma(self, timestep: int) -> tuple[float, float]:
        a = float(self.alphas_cumprod[timestep].double())
        return math.sqrt(a), math.sqrt(max(1.0 - a, 0.0))

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Imagen dynamic thresholding (Saharia et al. 2022), per sample: clamp to ``[-s, s]`` and divide by ``s``."""
        flat = x0.reshape(x0.shape[0], -1).abs()
        s = torch.quantile(flat, self.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1.0, max=self.sample_max_value).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    def convert_model_output(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
        """The network output ``(B, C, *S)`` (eps, x0 or v) at ``(sample, timestep)`` as the (clipped / thresholded)
        float32 data prediction ``x0`` ``(B, C, *S)``."""
        alpha_t, sigma_t = self._alpha_sigma(timestep)
        out = model_output.float()
        x = sample.float()
        if self.prediction_type == DDPMPredictionType.EPSILON:
            x0 = (x - sigma_t * out) / alpha_t
        elif self.prediction_type == DDPMPredictionType.SAMPLE:
            x0 = out
        else:  # v_prediction: v = alpha_t * eps - sigma_t * x0
            x0 = alpha_t * x - sigma_t * out
        if self.thresholding:
            x0 = self._threshold(x0)
        elif self.clip_sample:
            x0 = x0.clamp(self.clip_sample_min, self.clip_sample_max)
        return x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        One multistep DPM-Solver++ update from ``timestep`` to the next timestep of ``self.timesteps``: with
        ``h = lambda_s - lambda_t`` and ``D_k`` the divided differences of the stored ``x0`` predictions in
        ``lambda`` (Lu et al. 2022, arXiv:2211.01095, Eq. (9) and Algorithm 2):
        ``x_s = sigma_s / sigma_t * x_t - alpha_s (e^{-h} - 1) D_0 [+ order-2/3 corrections]``.

        Args:
            model_output: network output (any float dtype) at ``(sample, timestep)``, ``(B, C, *S)``.
            timestep: current timestep, an element of ``self.timesteps``.
            sample: current noisy sample ``x_t`` ``(B, C, *S)``.
            generator: unused (the solver is deterministic); kept for API compatibility.

        Returns:
            ``(prev_sample, pred_original_sample)``, float32 ``(B, C, *S)`` on ``sample``'s device.
        """
        t = int(timestep)
        matches = (self.timesteps.cpu() == t).nonzero()
        if matches.numel() == 0:
            raise ValueError(f"timestep must be one of self.timesteps (call set_timesteps first), got {timestep}.")
        index = int(matches[0, 0])
        if index != 0 and index != self._step_index:
            raise ValueError(
                f"timestep {t} is step {index} of the grid but step {self._step_index} was expected; "
                "call step once per timestep in order."
            )
        if index == 0:
            self._reset_history()

        x = sample.float()
        x0 = self.convert_model_output(model_output.to(sample.device), t, x)
        alpha_t, sigma_t = self._alpha_sigma(t)
        lambda_t = math.log(alpha_t) - math.log(sigma_t)
        self._x0_history = [*self._x0_history, x0][-self.solver_order :]
        self._lambda_history = [*self._lambda_history, lambda_t][-self.solver_order :]
        self._step_index = index + 1

        n = self.num_inference_steps
        if index == n - 1:  # final step to alphas_cumprod = 1 (lambda = inf): the exact update is x0 itself
            return x0, x0

        order = min(self.solver_order, len(self._x0_history))
        if self.lower_order_final:
            if n < self.lower_order_final_max_steps:
                order = min(order, n - index)
            if index == n - 2:
                # the step into timestep 0 is several times longer in lambda than the previous ones (log-SNR grows
                # fast near t = 0), so extrapolating the x0 history over it is unstable: take it first order
                order = 1
        s = int(self.timesteps[index + 1])
        alpha_s, sigma_s = self._alpha_sigma(s)
        lambda_s = math.log(alpha_s) - math.log(sigma_s)
        h = lambda_s - lambda_t
        phi_1 = math.expm1(-h)  # e^{-h} - 1

        m0 = self._x0_history[-1]
        prev = (sigma_s / sigma_t) * x - (alpha_s * phi_1) * m0
        if order >= 2:
            m1 = self._x0_history[-2]
            r0 = (lambda_t - self._lambda_history[-2]) / h
            d1_0 = (m0 - m1) / r0
            if order == 2:
                # DPM-Solver++(2M) (Algorithm 2): -0.5 * alpha_s * (e^{-h} - 1) * D1
                prev = prev - (0.5 * alpha_s * phi_1) * d1_0
            else:
                # DPM-Solver++(3M): second-order divided differences (Lu et al. 2022, App. B)
                m2 = self._x0_history[-3]
                r1 = (self._lambda_history[-2] - self._lambda_history[-3]) / h
                d1_1 = (m1 - m2) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = phi_1 / h + 1.0
                phi_3 = phi_2 / h - 0.5
                prev = prev + (alpha_s * phi_2) * d1 - (alpha_s * phi_3) * d2
        return prev, x0
