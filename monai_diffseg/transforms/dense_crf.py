# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Dense CRF refinement of a fused probability map, guided by the input image (see :py:class:`DenseCRF`).

DiffSeg refines the fused diffusion masks with a fully connected CRF (Krähenbühl and Koltun) whose bilateral term
snaps the mask to image edges. Note that DiffSeg's reference code averaged masks saved as 0..255 images without
normalising them before building the unary; here the unary always comes from the fused probability in ``[0, 1]``.

References:
    - Krähenbühl and Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
      NeurIPS 2011.
    - Teichmann and Cipolla, "Convolutional CRFs for Semantic Segmentation", BMVC 2019 (windowed torch backend).
    - Shuai et al., "DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference", 2024.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import Transform
from monai.utils import OptionalImportError, TransformBackends, convert_to_tensor, optional_import

from monai_diffseg.networks.blocks.torch_crf import TorchDenseCRF
from monai_diffseg.transforms.fusion import check_probability_map, to_output
from monai_diffseg.utils import look_up_named_option

__all__ = ["CRF_BACKENDS", "GUIDE_SCALINGS", "scale_guide", "DenseCRF"]

#: ways of bringing the guide image to 0..255, see :py:func:`scale_guide`.
GUIDE_SCALINGS = ("auto", "minmax", "none")
#: implementations of :py:class:`DenseCRF` (``backend``).
CRF_BACKENDS = ("pydensecrf", "torch")


def _import_pydensecrf() -> tuple[Any, Any]:
    """Import ``pydensecrf.densecrf`` and ``pydensecrf.utils`` lazily, with installation instructions if missing."""
    dcrf, has_dcrf = optional_import("pydensecrf.densecrf")
    utils, has_utils = optional_import("pydensecrf.utils")
    if not (has_dcrf and has_utils):
        raise OptionalImportError(
            'DenseCRF(backend="pydensecrf") requires pydensecrf, which is not installed: '
            'pip install "monai-diffseg[crf]", or use backend="torch"'
        )
    return dcrf, utils


def scale_guide(
    guide: NdarrayOrTensor, spatial_shape: Sequence[int], scaling: str = "auto", name: str = "guide"
) -> torch.Tensor:
    """
    Validate a channel-first guide image and bring it to the 0..255 intensity range.

    Args:
        guide: image ``(Cg, H, W[, D])``, ``uint8`` or floating point, e.g. RGB or grayscale.
        spatial_shape: the spatial shape of the probability map the guide must match.
        scaling: ``"auto"``: ``uint8`` is kept, floating point images with values in ``[0, 1]`` are multiplied by
            255, any other range is min-max rescaled to ``[0, 255]`` (e.g. CT/MR intensities);
            ``"minmax"``: always min-max rescale to ``[0, 255]`` (a constant image gives zeros);
            ``"none"``: values are taken as already in 0..255 and clipped.
        name: name of the argument, used in error messages.

    Returns float32 ``(Cg, H, W[, D])`` in ``[0, 255]``, rounded to integers as a ``uint8`` image; raises
    ``ValueError`` for a wrong number of dimensions, a spatial size other than ``spatial_shape``, or NaN values.
    """
    scaling = look_up_named_option("guide_scaling", scaling, GUIDE_SCALINGS)
    g = convert_to_tensor(guide, track_meta=False)
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if g.ndim != len(spatial_shape) + 1 or tuple(g.shape[1:]) != spatial_shape or g.shape[0] < 1:
        raise ValueError(
            f"{name} must be channel first with the spatial size of prob, "
            f"i.e. (Cg, {', '.join(map(str, spatial_shape))}), "
            f"got {name} with shape {tuple(g.shape)} and prob with spatial shape {spatial_shape}."
        )
    is_uint8 = g.dtype == torch.uint8
    g = g.to(torch.float32)
    if torch.isnan(g).any():
        raise ValueError(f"{name} must not contain NaN values, got {name} with shape {tuple(g.shape)}.")
    if scaling == "minmax" or (scaling == "auto" and not is_uint8 and (g.min() < 0 or g.max() > 1)):
        lo, hi = g.min(), g.max()
        g = (g - lo) / (hi - lo) * 255.0 if hi > lo else torch.zeros_like(g)
    elif scaling == "auto" and not is_uint8:
        g = g * 255.0
    return g.clamp(0.0, 255.0).round()


class DenseCRF(Transform):
    """
    Dense CRF refinement of a fused probability map ``(C, H, W[, D])`` (e.g. of
    :py:class:`~monai_diffseg.transforms.fusion.MeanEnsembleFusion`) guided by a channel-first image
    ``(Cg, H, W[, D])`` of the same spatial size: returns the refined probability (or hard mask) ``(C, H, W[, D])``
    with the probability's ``MetaTensor`` metadata. Defaults are DiffSeg's.

    The unary is ``-log p`` of the label probabilities, clipped to ``[eps, 1 - eps]``: for ``C == 1`` the labels
    background ``1 - p`` and foreground ``p``; for ``C > 1`` the channels, renormalised, as mutually exclusive class
    probabilities (softmax output including background). Pairwise terms (Potts, symmetric kernel normalisation):
    Gaussian ``exp(-|p_i - p_j|^2 / (2 gaussian_sxy^2))`` with weight ``gaussian_weight`` and bilateral
    ``exp(-|p_i - p_j|^2 / (2 bilateral_sxy^2) - |I_i - I_j|^2 / (2 bilateral_srgb^2))`` with weight
    ``bilateral_weight``, where ``I`` is the guide brought to 0..255 (:py:func:`scale_guide`). Backends, with the
    same parameters (validated once by the ``TorchDenseCRF`` held as ``self.crf``):

    - ``"pydensecrf"``: the exact reference (permutohedral lattice, CPU, ``pip install "monai-diffseg[crf]"``): 2D
      uses ``pydensecrf.densecrf.DenseCRF2D`` (``addPairwiseBilateral`` for RGB guides); other 2D guides and 3D use
      the generic ``DenseCRF(n_voxels, n_labels)`` with ``pydensecrf.utils.create_pairwise_gaussian`` /
      ``create_pairwise_bilateral(..., chdim=0)``.
    - ``"torch"`` (:py:class:`~monai_diffseg.networks.blocks.torch_crf.TorchDenseCRF`, any device, no compiled
      dependency): the bilateral kernel is evaluated over a local window of ``window_size`` taps spaced by
      ``dilation`` voxels (ConvCRF-style), so DiffSeg's ``bilateral_sxy=80`` is effectively truncated to the window
      reach. Run without gradients; use the module itself to train through it.

    Args:
        bilateral_sxy: spatial standard deviation (voxels) of the bilateral kernel, scalar or per spatial axis.
        bilateral_srgb: intensity standard deviation of the bilateral kernel (guide in 0..255).
        bilateral_weight: bilateral compatibility (pydensecrf ``compat``); 0 disables the term.
        gaussian_sxy: standard deviation (voxels) of the Gaussian kernel, scalar or per spatial axis.
        gaussian_weight: Gaussian compatibility (pydensecrf ``compat``); 0 disables the term.
        num_iterations: mean-field iterations.
        binarize: return the hard mask (``p >= 0.5`` for ``C == 1``, one-hot argmax otherwise); ``__call__``'s
            ``binarize`` overrides it for one call.
        guide_scaling: ``"auto"``, ``"minmax"`` or ``"none"``, see :py:func:`scale_guide`.
        eps: probability clipping, in ``(0, 0.5)``.
        backend: ``"pydensecrf"`` or ``"torch"`` (:data:`CRF_BACKENDS`).
        window_size: ``backend="torch"`` only: odd number of bilateral window taps per axis (``None``: 11 2D, 7 3D).
        dilation: ``backend="torch"`` only: voxel spacing of the bilateral window taps (``None``: 4 in 2D, 3 in 3D).

    Raises:
        ValueError: an invalid parameter (named in the message), ``window_size`` / ``dilation`` with
            ``backend="pydensecrf"``; when called: a ``prob`` with wrong dimensions, NaN or values outside
            ``[0, 1]``, or a ``guide`` whose spatial size differs from ``prob``'s.
        OptionalImportError: ``backend="pydensecrf"`` without pydensecrf.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        bilateral_sxy: float | Sequence[float] = 80.0,
        bilateral_srgb: float = 13.0,
        bilateral_weight: float = 10.0,
        gaussian_sxy: float | Sequence[float] = 3.0,
        gaussian_weight: float = 3.0,
        num_iterations: int = 5,
        binarize: bool = False,
        guide_scaling: str = "auto",
        eps: float = 1e-5,
        backend: str = "pydensecrf",
        window_size: int | None = None,
        dilation: int | None = None,
    ) -> None:
        self.crf_backend = look_up_named_option("backend", backend, CRF_BACKENDS)
        if self.crf_backend == "pydensecrf":
            if window_size is not None or dilation is not None:
                raise ValueError(
                    f"window_size and dilation apply to backend='torch' only, got window_size={window_size}, "
                    f"dilation={dilation} with backend='pydensecrf' (fully connected): remove them or use 'torch'."
                )
            _import_pydensecrf()
        kernel_args = (bilateral_sxy, bilateral_srgb, bilateral_weight, gaussian_sxy, gaussian_weight, num_iterations)
        self.crf = TorchDenseCRF(*kernel_args, window_size=window_size, dilation=dilation, eps=eps)  # same order
        self.binarize = binarize
        self.guide_scaling = look_up_named_option("guide_scaling", guide_scaling, GUIDE_SCALINGS)

    def _pydensecrf(self, prob: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """pydensecrf's mean field on CPU: ``prob`` ``(C, *S)`` in [0, 1], ``guide`` ``(Cg, *S)`` in 0..255."""
        dcrf, utils = _import_pydensecrf()
        crf = self.crf
        labels = crf.label_probabilities(prob.detach()[None].float())[0].cpu().numpy()
        guide_np = guide.cpu().numpy().astype(np.float32)
        n_labels, spatial = labels.shape[0], labels.shape[1:]
        g_sxy, b_sxy = crf.spatial_sigmas(len(spatial))
        if len(spatial) == 2:
            dense = dcrf.DenseCRF2D(spatial[1], spatial[0], n_labels)  # (width, height)
        else:
            dense = dcrf.DenseCRF(int(np.prod(spatial)), n_labels)
        dense.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(labels, clip=None), dtype=np.float32))
        if crf.gaussian_weight != 0:
            feats = utils.create_pairwise_gaussian(sdims=g_sxy, shape=spatial)
            dense.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=crf.gaussian_weight)
        if crf.bilateral_weight != 0:
            if len(spatial) == 2 and guide_np.shape[0] == 3 and b_sxy[0] == b_sxy[1]:
                rgb = np.ascontiguousarray(np.moveaxis(guide_np, 0, -1).astype(np.uint8))  # (H, W, 3)
                dense.addPairwiseBilateral(
                    sxy=b_sxy[0], srgb=crf.bilateral_srgb, rgbim=rgb, compat=crf.bilateral_weight
                )
            else:
                schan = (crf.bilateral_srgb,) * guide_np.shape[0]
                feats = utils.create_pairwise_bilateral(sdims=b_sxy, schan=schan, img=guide_np, chdim=0)
                dense.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=crf.bilateral_weight)
        q = np.array(dense.inference(crf.num_iterations), dtype=np.float32).reshape(n_labels, *spatial)
        return torch.as_tensor(q[1:] if prob.shape[0] == 1 else q, device=prob.device).to(prob.dtype)

    def __call__(self, prob: NdarrayOrTensor, guide: NdarrayOrTensor, binarize: bool | None = None) -> torch.Tensor:
        img, data = check_probability_map(prob, "prob")
        scaled = scale_guide(guide, data.shape[1:], self.guide_scaling)
        if self.crf_backend == "pydensecrf":
            out = self._pydensecrf(data, scaled)
        else:
            with torch.no_grad():
                out = self.crf(data[None], scaled.to(data.device)[None])[0]
        if self.binarize if binarize is None else binarize:
            if out.shape[0] == 1:
                out = (out >= 0.5).to(out.dtype)
            else:  # one-hot argmax
                out = torch.zeros_like(out).scatter_(0, out.argmax(dim=0, keepdim=True), 1.0)
        return to_output(out, img)
