# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Small shared utilities."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import torch
import torch.nn as nn
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.utils import look_up_option

__all__ = ["atomic_write", "describe_error", "look_up_named_option", "as_flag"]


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """
    Open a temporary file beside ``path`` (parent folders are created) and move it onto ``path`` with ``os.replace``
    on success, so readers never see a partial file; on any error the temporary file is removed and ``path`` is
    untouched.

    Args:
        path: destination file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        open_kwargs: passed to ``os.fdopen`` (e.g. ``newline=""`` for CSV).
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would (0666 minus the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``os.umask`` sets it, racing threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "none", "null", "")


def as_flag(value: bool | int | str | None, name: str) -> bool:
    """
    A bundle's on/off option as a bool: ``python -m monai.bundle run ... --review_report false`` passes the *string*
    ``"false"`` (Fire parses only Python's ``False``), which ``bool()`` would take as on.

    Raises:
        ValueError: a string that is not a yes/no word, naming the option ``name``.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in _TRUE_WORDS + _FALSE_WORDS:
            raise ValueError(f"{name} must be true or false, got '{value}' (e.g. --{name} false).")
        return word in _TRUE_WORDS
    return bool(value)


def describe_error(err: BaseException) -> str:
    """``"Type: message"`` of the outermost exception of a chain that is not a MONAI ``applying transform ...``
    wrapper: what went wrong (with the file name where our loaders add it) rather than where MONAI caught it."""
    best = err
    while str(best).startswith("applying transform") and best.__cause__ is not None:
        best = best.__cause__
    return f"{type(best).__name__}: {best}"


# --- input checks at the API boundary (networks, inferers): one reduction and one host sync per tensor on the fast
# path; data-dependent checks are skipped while tracing, compiling or exporting (a branch on values would be frozen
# into the graph or break it). Each check takes `name`, the argument's name (e.g. "image"), and `owner`, the prefix of
# its messages (e.g. "MedSegDiff.forward") -------------------------------------------------------------------------

__all__ += ["batch_item_names", "check_finite", "check_floating", "check_timesteps", "data_checks_enabled"]


def data_checks_enabled() -> bool:
    """``False`` while ``torch.jit`` traces or ``torch.compile`` / ``torch.export`` capture a graph, else ``True``."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting())


def _listed(values: Any, limit: int = 10) -> str:
    """``[a, b, c]`` with at most ``limit`` entries, then ``and K more``."""
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"[{shown}]{more}"


def batch_item_names(x: Any) -> list[str] | None:
    """The source file of every item of a batch ``x`` ``(N, ...)`` (``meta["filename_or_obj"]``), or ``None`` unless
    ``x`` is a collated ``MetaTensor`` holding ``N`` names."""
    meta = getattr(x, "meta", None)
    names = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    if isinstance(names, (list, tuple)) and len(names) == int(x.shape[0]):
        return [str(n) for n in names]
    return None


def check_finite(
    x: torch.Tensor,
    name: str,
    owner: str = "",
    item_names: Sequence[str] | Callable[[int], str] | None = None,
    hint: str = "",
) -> None:
    """
    Raise a ``ValueError`` naming ``name`` and the batch items (dim 0) of ``x`` that hold NaN or infinite values.
    Integer and bool tensors are always finite; skipped while tracing (:func:`data_checks_enabled`).

    Args:
        x: ``(B, ...)`` tensor.
        item_names: a label per batch item (e.g. from :func:`batch_item_names`), or a callable mapping an index to
            its label; shown beside the indices.
        hint: the likely cause and fix; a generic one when empty.
    """
    if not (torch.is_floating_point(x) or torch.is_complex(x)) or x.numel() == 0 or not data_checks_enabled():
        return
    if bool(torch.isfinite(x).all()):
        return
    flat = x.detach().reshape(x.shape[0], -1) if x.ndim > 0 else x.detach().reshape(1, 1)
    bad = (~torch.isfinite(flat)).any(dim=1).nonzero().flatten().tolist()
    num_nan, num_inf = int(torch.isnan(flat).sum()), int(torch.isinf(flat).sum())
    items = _listed(bad)
    if item_names is not None:
        label = item_names if callable(item_names) else (lambda i: str(item_names[i]))  # type: ignore[index]
        items += " (" + _listed(label(i) for i in bad)[1:-1] + ")"
    prefix = f"{owner}: " if owner else ""
    hint = hint or (
        "one NaN/Inf value turns the whole prediction NaN. Find the source (a damaged file, an intensity scaling that "
        "divides by zero on a constant image) or replace the values, e.g. torch.nan_to_num."
    )
    raise ValueError(
        f"{prefix}{name} (shape {tuple(x.shape)}, dtype {x.dtype}) holds non-finite values ({num_nan} NaN, {num_inf} "
        f"Inf) in batch item(s) {items} of {x.shape[0] if x.ndim else 1}; {hint}"
    )


def check_floating(
    x: torch.Tensor, name: str, owner: str = "", dtype: torch.dtype | None = None, value_hint: str = ""
) -> torch.Tensor:
    """
    Return floating ``x`` cast to ``dtype`` (when given); raise a ``TypeError`` for an integer, bool or complex ``x``:
    an integer image (uint8 0-255) fed to a model trained on scaled intensities is a silent error, and scaling is
    the preprocessing's job.

    Args:
        x: input tensor.
        dtype: floating dtype to cast floating inputs to; ``None`` keeps them.
        value_hint: what intensities the model expects (default: ``"intensities scaled as in training, e.g. [0, 1]"``).
    """
    if torch.is_floating_point(x):
        return x if dtype is None or x.dtype == dtype else x.to(dtype)
    prefix = f"{owner}: " if owner else ""
    expected = value_hint or "intensities scaled as in training, e.g. [0, 1]"
    raise TypeError(
        f"{prefix}{name} has dtype {x.dtype}; expected a floating point tensor ({dtype or torch.float32}) of "
        f"{expected}. Integer images (e.g. uint8 0-255 read from PNG/JPEG) are not cast silently: scale and convert "
        "them in preprocessing, e.g. monai.transforms.ScaleIntensityd(keys='image') (or ScaleIntensityRanged(a_min=0, "
        "a_max=255, b_min=0, b_max=1)) followed by EnsureTyped(keys='image', dtype=torch.float32)."
    )


def check_timesteps(
    timesteps: torch.Tensor,
    batch_size: int | None = None,
    num_train_timesteps: int | None = None,
    name: str = "timesteps",
    owner: str = "",
) -> None:
    """
    Check diffusion steps: a scalar or ``(B,)`` (or ``(1,)``) tensor of finite values in ``[0, T - 1]``; a
    ``TypeError`` for a non-tensor, a ``ValueError`` otherwise. The shape check always runs, the value check not
    while tracing (:func:`data_checks_enabled`).

    Args:
        timesteps: ``()`` or ``(B,)``.
        batch_size: ``B``, the batch of the tensor the steps belong to (``None``: any length).
        num_train_timesteps: ``T``; ``None`` checks ``>= 0`` only (a network does not know ``T``: the upper bound is
            checked where it is known, by the schedulers, the prepare-batch and the inferers).
    """
    prefix = f"{owner}: " if owner else ""
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(
            f"{prefix}{name} must be a torch.Tensor of shape (B,) or a scalar tensor, got {type(timesteps).__name__} "
            f"({timesteps!r}); e.g. torch.full((B,), t, dtype=torch.long)."
        )
    if timesteps.ndim > 1 or (
        timesteps.ndim == 1 and batch_size is not None and timesteps.shape[0] not in (1, int(batch_size))
    ):
        raise ValueError(
            f"{prefix}{name} must be a scalar tensor or have shape ({batch_size if batch_size is not None else 'B'},) "
            f"(one step per batch item), got shape {tuple(timesteps.shape)}."
        )
    if timesteps.numel() == 0 or not data_checks_enabled():
        return
    t = timesteps.detach().reshape(-1)
    ok = t >= 0  # False for NaN too
    if num_train_timesteps is not None:
        ok = ok & (t <= int(num_train_timesteps) - 1)
    if bool(ok.all()):
        return
    bad = (~ok).nonzero().flatten().tolist()
    values = [t[i].item() for i in bad]
    if num_train_timesteps is not None:
        allowed = f"in [0, {int(num_train_timesteps) - 1}] (num_train_timesteps={int(num_train_timesteps)})"
    else:
        allowed = (
            ">= 0 and finite (diffusion steps 0 .. T - 1; the upper bound is checked where T is known: the scheduler, "
            "the prepare-batch, the inferers)"
        )
    where = "batch item(s)" if batch_size is not None else "index(es)"
    raise ValueError(f"{prefix}{name} must be {allowed}, got {_listed(values)} at {where} {_listed(bad)}.")


# --- helpers shared by the engines, inferers, networks and transforms ------------------------------------------------

__all__ += ["unwrap_network", "image_to_diffusion", "diffusion_to_image", "gaussian_blur"]


def unwrap_network(network: Any) -> Any:
    """The module inside a ``torch.nn.DataParallel`` / ``DistributedDataParallel`` wrapper (to reach its attributes
    and state dict); anything else, including a network with its own ``module`` attribute, comes back unchanged."""
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return network.module
    return network


def image_to_diffusion(x: torch.Tensor, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """
    Map intensities ``(N, C, *S)`` (an image, or a ``{0, 1}`` mask with the default range) from ``value_range`` to
    the diffusion sample space ``[-1, 1]``: ``(x - low) / (high - low) * 2 - 1``, as float. Raises a ``ValueError``
    unless ``high > low``.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {tuple(value_range)}.")
    return (x.float() - low) / (high - low) * 2.0 - 1.0


def diffusion_to_image(x: torch.Tensor, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`image_to_diffusion`: ``[-1, 1]`` back to ``value_range`` (a ``[0, 1]`` mask by default)."""
    low, high = float(value_range[0]), float(value_range[1])
    return (x.float() + 1.0) / 2.0 * (high - low) + low


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """
    Separable Gaussian blur ``(B, C, *S) -> (B, C, *S)`` of every channel with standard deviation ``sigma`` (pixels,
    > 0): MONAI's :func:`~monai.networks.layers.separable_filtering` with a sampled, sum-normalised kernel truncated
    at ``3 sigma`` (:func:`~monai.networks.layers.convutils.gaussian_1d`) and reflect padding (replicate when a side
    is not longer than the kernel radius). Unlike MONAI's ``GaussianFilter`` (zero padding), borders are not darkened.
    """
    kernel = gaussian_1d(sigma, truncated=3.0, approx="sampled", normalize=True)
    mode = "reflect" if min(x.shape[2:]) > (kernel.numel() - 1) // 2 else "replicate"
    return separable_filtering(x, kernel.to(x), mode=mode)


def look_up_named_option(name: str, value: Any, supported: Any) -> Any:
    """:py:func:`monai.utils.look_up_option` (``value`` among ``supported``) whose ``ValueError`` starts with the
    argument's ``name``."""
    try:
        return look_up_option(value, supported)
    except ValueError as err:
        raise ValueError(f"{name}={value!r} is not supported. {err}") from err
