# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
MedSegDiff's parts as TorchScript or ONNX files, and :class:`ExportedMedSegDiff`, the network the samplers take in
place of the eager one.

Exported: the condition encoder (``encode_condition``, once per image), the anchor head (``anchor``) and the per-step
denoiser (``forward(x_t, t, condition=...)``), each a graph with a dynamic batch axis at one fixed spatial size (the
FF-Parser's Fourier weight is resampled to the spectrum of that size and stored as a constant). The sampler loop
(scheduler steps, member seeding, tiling, fusion) stays Python: :class:`monai_diffseg.inferers.DiffusionSegmentationInferer`
runs it on an :class:`ExportedMedSegDiff` exactly as on the eager network.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.config import PathLike
from monai.data import save_net_with_metadata
from monai.utils import look_up_option, optional_import

from monai_diffseg.networks.blocks.ff_parser import FFParser
from monai_diffseg.utils import unwrap_network

onnx, has_onnx = optional_import("onnx")
ort, has_ort = optional_import("onnxruntime")

__all__ = ["ExportedMedSegDiff", "export_medsegdiff", "onnx_part_paths", "EXPORT_FORMATS", "EXPORT_META_KEY"]

#: export formats -> file suffix
EXPORT_FORMATS: dict[str, str] = {"torchscript": ".ts", "onnx": ".onnx"}
#: key of the export description in the file's metadata (``metadata.json`` in TorchScript, ``metadata_props`` in ONNX)
EXPORT_META_KEY = "monai_diffseg_export"
#: version of the exported signatures below; a loader refuses files of another version
EXPORT_VERSION = 1
_INSTALL_HINT = "install the export extra: pip install 'monai-diffseg[export]' (onnx, onnxscript, onnxruntime)"


def onnx_part_paths(filepath: PathLike) -> dict[str, str]:
    """
    The files of an ONNX export ``filepath`` (``models/model.onnx``): one graph per part, the per-step denoiser in
    ``filepath`` itself, ``{"forward": "model.onnx", "encode_condition": "model.encoder.onnx", "anchor":
    "model.anchor.onnx"}`` (an ONNX graph has one entry point; the TorchScript export keeps all three methods in one
    file).
    """
    path = os.fspath(filepath)
    stem = path[: -len(".onnx")] if path.endswith(".onnx") else path
    return {"forward": stem + ".onnx", "encode_condition": stem + ".encoder.onnx", "anchor": stem + ".anchor.onnx"}


class _FixedSizeFFParser(nn.Module):
    """
    :class:`FFParser` at one input size: its complex weight precomputed (two real buffers) and applied in real
    arithmetic on ``view_as_real`` of the spectrum. Same output as the block at that size; the export then has no
    ``fftfreq`` and no complex parameter, which the ONNX exporter cannot translate.
    """

    def __init__(self, block: FFParser, spatial_shape: Sequence[int]) -> None:
        super().__init__()
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.dims = tuple(range(2, 2 + len(self.spatial_shape)))
        with torch.no_grad():
            weight = block.spectral_weight(self.spatial_shape)
        self.register_buffer("weight_real", weight.real.clone().contiguous())
        self.register_buffer("weight_imag", weight.imag.clone().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_real(torch.fft.rfftn(x.float(), dim=self.dims, norm="ortho"))
        re, im = spectrum[..., 0], spectrum[..., 1]
        wr, wi = self.weight_real, self.weight_imag
        product = torch.stack((re * wr - im * wi, re * wi + im * wr), dim=-1)
        out = torch.fft.irfftn(torch.view_as_complex(product), s=self.spatial_shape, dim=self.dims, norm="ortho")
        return out.to(x.dtype)


class _ExportParts(nn.Module):
    """
    A float32, eval-mode copy of a MedSegDiff-like network (``encode_condition``, ``anchor``, ``forward(x_t,
    timesteps, condition=..., [x_self_cond=...])``) with flat tensor signatures for tracing, FF-Parsers fixed to the
    sizes they see at ``spatial_shape``:

    - ``forward(x_t, timesteps, [x_self_cond,] *condition)``: ``(B, C, *S)``; timesteps ``(B,)`` float32; the
      condition levels with batch ``B`` (the caller tiles them to the members).
    - ``encode_condition(image)``: tuple of the condition levels.
    - ``anchor(condition_0)``: anchor logits ``(N, C, *S)``.
    """

    def __init__(self, network: nn.Module, spatial_shape: Sequence[int], example: torch.Tensor) -> None:
        super().__init__()
        net = copy.deepcopy(unwrap_network(network)).float().eval()
        self.self_condition = bool(getattr(net, "self_condition", False))
        self.has_anchor = getattr(net, "anchor_head", None) is not None
        sizes: dict[str, tuple[int, ...]] = {}
        hooks = [
            module.register_forward_pre_hook(
                lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[2:]))
            )
            for name, module in net.named_modules()
            if isinstance(module, FFParser)
        ]
        with torch.no_grad():
            condition = net.encode_condition(example)
            x_t = torch.zeros(example.shape[0], net.out_channels, *spatial_shape, device=example.device)
            net(x_t, torch.zeros(example.shape[0], dtype=torch.long, device=example.device), condition=condition)
        for hook in hooks:
            hook.remove()
        for name, size in sizes.items():
            parent, _, leaf = name.rpartition(".")
            owner = net.get_submodule(parent) if parent else net
            setattr(owner, leaf, _FixedSizeFFParser(net.get_submodule(name), size))
        self.net = net
        self.num_levels = len(condition)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        if self.self_condition:
            return self.net(x_t, timesteps, condition=rest[1:], x_self_cond=rest[0])
        return self.net(x_t, timesteps, condition=rest)

    def encode_condition(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.encode_condition(image))

    def anchor(self, condition_0: torch.Tensor) -> torch.Tensor:
        return self.net.anchor((condition_0,))


class _Method(nn.Module):
    """``forward`` = one method of ``parts`` (the ONNX exporter exports ``forward`` only)."""

    def __init__(self, parts: _ExportParts, method: str) -> None:
        super().__init__()
        self.parts, self.method = parts, method

    def forward(self, *args: torch.Tensor) -> Any:
        return getattr(self.parts, self.method)(*args)


def _describe(network: nn.Module, parts: _ExportParts, spatial_shape: tuple[int, ...], fmt: str, device: Any) -> dict:
    net = unwrap_network(network)
    return {
        "version": EXPORT_VERSION,
        "format": fmt,
        "network": type(net).__name__,
        "spatial_dims": len(spatial_shape),
        "spatial_shape": list(spatial_shape),
        "in_channels": int(net.in_channels),
        "out_channels": int(net.out_channels),
        "num_levels": parts.num_levels,
        "anchor_head": parts.has_anchor,
        "self_condition": parts.self_condition,
        "size_divisor": int(getattr(net, "size_divisor", 1)),
        "dtype": "float32",
        "device": str(torch.device(device)),
        "torch_version": torch.__version__,
    }


def _example_inputs(parts: _ExportParts, image: torch.Tensor, out_channels: int) -> dict[str, tuple]:
    with torch.no_grad():
        condition = parts.encode_condition(image)
    n = image.shape[0]
    x_t = torch.randn(n, out_channels, *image.shape[2:], device=image.device)
    timesteps = torch.linspace(0, 999, n, device=image.device)
    self_cond = (torch.zeros_like(x_t),) if parts.self_condition else ()
    inputs = {"forward": (x_t, timesteps, *self_cond, *condition), "encode_condition": (image,)}
    return {**inputs, "anchor": (condition[0],)} if parts.has_anchor else inputs


def _input_names(parts: _ExportParts) -> dict[str, list[str]]:
    levels = [f"condition_{i}" for i in range(parts.num_levels)]
    self_cond = ["x_self_cond"] if parts.self_condition else []
    return {
        "forward": ["x_t", "timesteps", *self_cond, *levels],
        "encode_condition": ["image"],
        "anchor": ["condition_0"],
    }


def export_medsegdiff(
    network: nn.Module,
    filepath: PathLike,
    spatial_shape: Sequence[int],
    export_format: str = "torchscript",
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    meta_values: Mapping[str, Any] | None = None,
    more_extra_files: Mapping[str, bytes | str] | None = None,
) -> list[str]:
    """
    Export the condition encoder, anchor head and per-step denoiser of ``network`` (a
    :class:`monai_diffseg.networks.nets.MedSegDiff`, 2D or 3D) for inputs of spatial size ``spatial_shape`` and any
    batch size; load the result with :class:`ExportedMedSegDiff`.

    - ``"torchscript"``: ``torch.jit.trace_module`` of the three parts into one file (methods ``forward``,
      ``encode_condition``, ``anchor``), saved by MONAI's ``save_net_with_metadata`` (``metadata.json`` and
      ``more_extra_files`` inside the archive, as ``monai.bundle ckpt_export`` writes them).
    - ``"onnx"``: ``torch.onnx.export(dynamo=True)`` of each part into its own graph (:func:`onnx_part_paths`),
      opset 20+, batch axis dynamic; metadata in every file's ``metadata_props``. The TorchScript-based ("legacy")
      exporter cannot translate the FF-Parser's ``rfftn`` / ``irfftn`` (``aten::fft_rfftn``), so ONNX needs the
      dynamo exporter and ``onnxscript`` (the ``export`` extra).

    Args:
        network: the trained network (weights loaded); copied, never modified.
        filepath: output file, ``model.ts`` or ``model.onnx``.
        spatial_shape: the input's spatial size, e.g. the bundle's ``image_size`` or the sliding window's
            ``roi_size``; divisible by the network's ``size_divisor``. The exported parts accept this size only.
        export_format: ``"torchscript"`` or ``"onnx"``.
        batch_size: batch of the example inputs (>= 2: a batch of 1 would be specialised by the exporters).
        device: where to trace. TorchScript records the device of tensors the network creates (timestep embedding),
            so export on the device you will run on (``"cuda"`` for a GPU).
        meta_values: extra metadata (e.g. the bundle's ``metadata.json``), stored beside the export description
            under :data:`EXPORT_META_KEY`.
        more_extra_files: further named files (e.g. ``{"inference.json": ...}``).

    Returns:
        The written file paths.

    Raises:
        ValueError: an unknown format, a network without ``encode_condition``/``out_channels``, a spatial size the
            network rejects, ``batch_size < 2``.
        RuntimeError: ONNX export without ``onnx``/``onnxscript`` installed.
    """
    export_format = look_up_option(export_format, tuple(EXPORT_FORMATS))
    net = unwrap_network(network)
    if not callable(getattr(net, "encode_condition", None)) or not hasattr(net, "out_channels"):
        raise ValueError(
            f"export_medsegdiff: {type(net).__name__} has no encode_condition/out_channels; only MedSegDiff-style "
            "conditional denoisers are exported (DiffSeg's image denoisers: use monai.bundle ckpt_export)."
        )
    if batch_size < 2:
        raise ValueError(f"export_medsegdiff: batch_size must be >= 2 (a batch of 1 is specialised), got {batch_size}.")
    spatial = tuple(int(s) for s in spatial_shape)
    if hasattr(net, "check_input_size"):
        net.check_input_size(spatial, "spatial_shape")
    device = torch.device(device)
    example = torch.rand(batch_size, int(net.in_channels), *spatial, device=device)
    parts = _ExportParts(network, spatial, example).to(device)
    description = _describe(network, parts, spatial, export_format, device)
    inputs = _example_inputs(parts, example, int(net.out_channels))
    meta = {**dict(meta_values or {}), EXPORT_META_KEY: description}
    extra = {k: (v.encode() if isinstance(v, str) else v) for k, v in (more_extra_files or {}).items()}
    path = os.fspath(filepath)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if export_format == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            # torch 2.13 marks jit.trace deprecated; data-dependent input checks are constant-folded for valid inputs
            warnings.simplefilter("ignore")
            traced = torch.jit.trace_module(parts, inputs, check_trace=False)
        save_net_with_metadata(traced, path, meta_values=meta, more_extra_files=extra)
        return [path if os.path.splitext(path)[1] else path + ".ts"]
    return _export_onnx(parts, inputs, path, meta, extra)


def _export_onnx(parts: _ExportParts, inputs: dict, path: str, meta: dict, extra: dict) -> list[str]:
    if not has_onnx or not optional_import("onnxscript")[1]:
        raise RuntimeError(f"export_medsegdiff: ONNX export needs onnx and onnxscript; {_INSTALL_HINT}.")
    names, written = _input_names(parts), []
    props = {"metadata.json": json.dumps(meta), **{k: v.decode() for k, v in extra.items()}}
    for method, target in onnx_part_paths(path).items():
        if method not in inputs:  # no anchor head
            if os.path.isfile(target):
                os.remove(target)  # a stale anchor graph of an earlier export would contradict the metadata
            continue
        batch = torch.export.Dim.DYNAMIC
        dynamic = tuple({0: batch} for _ in inputs[method])
        outputs = (
            [f"condition_{i}" for i in range(parts.num_levels)]
            if method == "encode_condition"
            else ["anchor_logits" if method == "anchor" else "prediction"]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Method(parts, method).eval(),
                inputs[method],
                dynamo=True,
                input_names=names[method],
                output_names=outputs,
                dynamic_shapes=(dynamic,),
                verbose=False,
            )
        model = program.model_proto
        onnx.helper.set_model_props(model, {**props, "part": method})
        onnx.save(model, target)
        written.append(target)
    return written


def _check_description(desc: Any, path: str) -> dict:
    if not isinstance(desc, Mapping) or "spatial_shape" not in desc:
        raise ValueError(
            f"ExportedMedSegDiff: '{path}' has no '{EXPORT_META_KEY}' metadata: it was not written by "
            "monai_diffseg's export (python -m monai_diffseg.export --bundle_root ...)."
        )
    if int(desc.get("version", -1)) != EXPORT_VERSION:
        raise ValueError(
            f"ExportedMedSegDiff: '{path}' is export version {desc.get('version')}, this monai_diffseg reads version "
            f"{EXPORT_VERSION}; re-export it with this version (python -m monai_diffseg.export ...)."
        )
    return dict(desc)


class ExportedMedSegDiff(nn.Module):
    """
    A MedSegDiff exported by :func:`export_medsegdiff` (``model.ts`` or ``model.onnx``), with the eager network's
    sampler interface: ``encode_condition``, ``anchor``, ``forward(x_t, timesteps, image=None, condition=None,
    x_self_cond=None)``, ``out_channels`` ... so :class:`monai_diffseg.inferers.DiffusionSegmentationInferer` (and
    ``SupervisedEvaluator``, MONAI Label) run it unchanged. Float32, the export's spatial size only, any batch.

    Args:
        path: ``.ts`` (TorchScript, loaded with ``torch.jit.load``) or ``.onnx`` (ONNX Runtime; the encoder and anchor
            graphs beside it, :func:`onnx_part_paths`).
        device: TorchScript: ``map_location``; ONNX: ``"cuda"`` selects ``CUDAExecutionProvider`` when available.
        providers: ONNX Runtime execution providers (default: CUDA first for a CUDA ``device``, then CPU).

    Attributes:
        metadata: the file's metadata (``metadata.json``: the bundle metadata plus :data:`EXPORT_META_KEY`).
        extra_files: further stored files (``inference.json`` for a bundle export), as text.

    Shapes:
        ``image`` ``(N, in_channels, *spatial_shape)``; ``x_t`` ``(k * N, out_channels, *spatial_shape)``, member-major
        as for MedSegDiff; returns ``(k * N, out_channels, *spatial_shape)``.
    """

    def __init__(
        self, path: PathLike, device: str | torch.device | None = None, providers: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        suffix = os.path.splitext(self.path)[1]
        formats = {v: k for k, v in EXPORT_FORMATS.items()}
        if suffix not in formats:
            raise ValueError(
                f"ExportedMedSegDiff: '{self.path}' must end with .ts (TorchScript) or .onnx (ONNX), got '{suffix}'."
            )
        self.format = formats[suffix]
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"ExportedMedSegDiff: '{self.path}' does not exist; write it with python -m monai_diffseg.export "
                f"--bundle_root <bundle> --format {self.format}."
            )
        self.extra_files: dict[str, str] = {}
        self.module: nn.Module | None = None
        self.sessions: dict[str, Any] = {}
        if self.format == "torchscript":
            files = {"metadata.json": "", "inference.json": ""}
            self.module = torch.jit.load(self.path, map_location=device, _extra_files=files)
            self.module.eval()
            raw = {k: v.decode() if isinstance(v, bytes) else v for k, v in files.items()}
            self.metadata = json.loads(raw.pop("metadata.json") or "{}")
            self.extra_files = {k: v for k, v in raw.items() if v}
        else:
            self.metadata = self._open_onnx(device, providers)
        desc = _check_description(self.metadata.get(EXPORT_META_KEY), self.path)
        self.description = desc
        self.spatial_dims = int(desc["spatial_dims"])
        self.spatial_shape = tuple(int(s) for s in desc["spatial_shape"])
        self.in_channels = int(desc["in_channels"])
        self.out_channels = int(desc["out_channels"])
        self.num_levels = int(desc["num_levels"])
        self.self_condition = bool(desc["self_condition"])
        self.size_divisor = int(desc.get("size_divisor", 1))
        #: ``True`` when the export has the anchor head, else ``None`` (what the samplers check, as on MedSegDiff)
        self.anchor_head = True if desc["anchor_head"] else None

    def _open_onnx(self, device: Any, providers: Sequence[str] | None) -> dict:
        if not has_ort:
            raise RuntimeError(f"ExportedMedSegDiff: running '{self.path}' needs onnxruntime; {_INSTALL_HINT}.")
        if providers is None:
            available = ort.get_available_providers()
            wanted = ["CPUExecutionProvider"]
            if device is not None and torch.device(device).type == "cuda":
                wanted.insert(0, "CUDAExecutionProvider")
            providers = [p for p in wanted if p in available] or available
        metadata: dict = {}
        for method, part in onnx_part_paths(self.path).items():
            if not os.path.isfile(part):
                if method == "anchor":
                    continue  # a network without an anchor head has no anchor graph
                raise FileNotFoundError(
                    f"ExportedMedSegDiff: '{part}' ({method}) is missing beside '{self.path}'; the ONNX export writes "
                    "one graph per part (onnx_part_paths): copy all of them."
                )
            session = ort.InferenceSession(part, providers=list(providers))
            self.sessions[method] = session
            if method == "forward":
                props = dict(session.get_modelmeta().custom_metadata_map)
                metadata = json.loads(props.pop("metadata.json", "{}"))
                self.extra_files = {k: v for k, v in props.items() if k != "part"}
        return metadata

    def _check(self, x: torch.Tensor, name: str, channels: int) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != channels or tuple(x.shape[2:]) != self.spatial_shape:
            raise ValueError(
                f"ExportedMedSegDiff ('{self.path}'): {name} must have shape (batch, {channels}, "
                f"{', '.join(map(str, self.spatial_shape))}) (the exported spatial size), got {tuple(x.shape)}. "
                "Resize in preprocessing (the bundle's image_size / roi_size), or re-export at this size with "
                "python -m monai_diffseg.export --spatial_shape ...."
            )
        if not torch.is_floating_point(x):
            raise TypeError(f"ExportedMedSegDiff: {name} has dtype {x.dtype}; expected a floating point tensor.")
        return x.float()

    def _run(self, method: str, *args: torch.Tensor) -> Any:
        if self.module is not None:
            traced_on = torch.device(self.description["device"]).type
            if args[0].device.type != traced_on:
                # the trace keeps the device of tensors the network creates (the timestep embedding's arange)
                raise RuntimeError(
                    f"ExportedMedSegDiff: '{self.path}' was traced on {traced_on} and cannot run on "
                    f"{args[0].device.type}; export it on that device (python -m monai_diffseg.export ... --device "
                    f"{args[0].device.type}) or use the ONNX export."
                )
            return getattr(self.module, method)(*args)
        session = self.sessions[method]
        device = args[0].device
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
        outputs = [torch.from_numpy(o).to(device) for o in session.run(None, feeds)]
        return tuple(outputs) if method == "encode_condition" else outputs[0]

    def encode_condition(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The condition levels of ``image`` ``(N, in_channels, *spatial_shape)``, as ``MedSegDiff.encode_condition``."""
        return tuple(self._run("encode_condition", self._check(image, "image", self.in_channels)))

    def anchor(self, condition: Sequence[torch.Tensor]) -> torch.Tensor:
        """Anchor logits ``(N, out_channels, *spatial_shape)`` from the condition levels (needs the anchor head)."""
        if self.anchor_head is None:
            raise ValueError(f"ExportedMedSegDiff: '{self.path}' was exported from a network without an anchor head.")
        return self._run("anchor", condition[0].float())

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        image: torch.Tensor | None = None,
        condition: Sequence[torch.Tensor] | None = None,
        x_self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The denoiser's prediction ``(B, out_channels, *S)`` for ``x_t``, as ``MedSegDiff.forward``: ``timesteps``
        ``(B,)`` or a scalar; ``condition`` from :meth:`encode_condition` (batch ``N``, ``B % N == 0``, tiled
        member-major here) or ``image`` to encode; ``x_self_cond`` for a self-conditioned export (zeros when ``None``).
        """
        x_t = self._check(x_t, "x_t", self.out_channels)
        if condition is None:
            if image is None:
                raise ValueError("ExportedMedSegDiff.forward needs either `image` or a precomputed `condition`.")
            condition = self.encode_condition(image)
        if len(condition) != self.num_levels:
            raise ValueError(
                f"ExportedMedSegDiff: condition has {len(condition)} levels, the export expects {self.num_levels}."
            )
        n, b = condition[0].shape[0], x_t.shape[0]
        if b % n:
            raise ValueError(f"ExportedMedSegDiff: x_t's batch {b} must be a multiple of the condition's batch {n}.")
        levels = [c.float().repeat(b // n, *([1] * (c.ndim - 1))) if b != n else c.float() for c in condition]
        timesteps = torch.as_tensor(timesteps, device=x_t.device).float()
        timesteps = timesteps.expand(b).contiguous() if timesteps.ndim == 0 else timesteps
        if self.self_condition:
            self_cond = torch.zeros_like(x_t) if x_self_cond is None else x_self_cond.float()
            return self._run("forward", x_t, timesteps, self_cond, *levels)
        if x_self_cond is not None:
            raise ValueError("ExportedMedSegDiff: x_self_cond was given but the export has no self-conditioning.")
        return self._run("forward", x_t, timesteps, *levels)

    def extra_repr(self) -> str:
        return f"'{self.path}', format={self.format}, spatial_shape={getattr(self, 'spatial_shape', None)}"
