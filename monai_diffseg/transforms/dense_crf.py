# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Dense CRF refinement of a fused probability map, guided by the input image.

DiffSeg refines the fused diffusion masks with a fully connected CRF (Krähenbühl and Koltun) whose bilateral term
snaps the mask to image edges. Two implementations are provided with the same parameters and defaults
(DiffSeg's: bilateral ``sxy=80``, ``srgb=13``, weight/compat ``10``; Gaussian ``sxy=3``, weight ``3``; 5 iterations):

- :py:class:`DenseCRF`: the reference, through ``pydensecrf`` (optional dependency,
  ``pip install "monai-diffseg[crf]"``): exact fully connected CRF with the permutohedral lattice, CPU only.
- :py:class:`TorchDenseCRFFusion`: pure PyTorch (:py:class:`monai_diffseg.networks.blocks.torch_crf.TorchDenseCRF`),
  with the bilateral kernel truncated to a local window; runs on GPU, 2D and 3D.

Both take the fused probability ``(C, H, W[, D])`` (e.g. the output of
:py:class:`monai_diffseg.transforms.fusion.MeanEnsembleFusion`) and a channel-first guide image
``(Cg, H, W[, D])``, and return the refined probability ``(C, H, W[, D])`` (or the hard mask with ``binarize``),
keeping the probability's ``MetaTensor`` metadata.

The guide is brought to the 0..255 range the bilateral ``srgb`` is expressed in (see :py:func:`scale_guide`).
Note that DiffSeg's reference code averaged masks saved as 0..255 images without normalising them before
building the unary; here the unary always comes from the fused probability in ``[0, 1]``, clipped to
``[eps, 1 - eps]``.

References:
    - Krähenbühl and Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
      NeurIPS 2011.
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

from monai_diffseg.networks.blocks.torch_crf import TorchDenseCRF, _per_axis, _store_crf_parameters
from monai_diffseg.transforms.fusion import check_probability_map, look_up_named_option, to_output

__all__ = ["GUIDE_SCALINGS", "scale_guide", "DenseCRF", "TorchDenseCRFFusion"]

_CRF_HINT = 'DenseCRF requires pydensecrf, which is not installed: pip install "monai-diffseg[crf]"'

#: ways of bringing the guide image to 0..255, see :py:func:`scale_guide`.
GUIDE_SCALINGS = ("auto", "minmax", "none")


def _import_pydensecrf() -> tuple[Any, Any]:
    """Import ``pydensecrf.densecrf`` and ``pydensecrf.utils`` lazily, with installation instructions if missing."""
    dcrf, has_dcrf = optional_import("pydensecrf.densecrf")
    utils, has_utils = optional_import("pydensecrf.utils")
    if not (has_dcrf and has_utils):
        raise OptionalImportError(_CRF_HINT)
    return dcrf, utils


def scale_guide(
    guide: NdarrayOrTensor, spatial_shape: Sequence[int], scaling: str = "auto", name: str = "guide"
) -> torch.Tensor:
    """
    Validate a channel-first guide image and bring it to the 0..255 intensity range.

    Args:
        guide: image ``(Cg, H, W[, D])``, ``uint8`` or floating point, e.g. RGB ``(3, H, W)`` or grayscale
            ``(1, H, W)``.
        spatial_shape: the spatial shape of the probability map the guide must match.
        scaling: ``"auto"``: ``uint8`` is kept, floating point images with values in ``[0, 1]`` are multiplied by
            255, any other range is min-max rescaled to ``[0, 255]`` (e.g. CT/MR intensities);
            ``"minmax"``: always min-max rescale to ``[0, 255]`` (a constant image gives zeros);
            ``"none"``: values are taken as already in 0..255 and clipped.
        name: name of the argument, used in error messages.

    Returns:
        float32 tensor ``(Cg, H, W[, D])`` with values in ``[0, 255]``, rounded to integers as for a ``uint8`` image.

    Raises:
        ValueError: wrong number of dimensions, spatial size different from ``spatial_shape``, or NaN values.
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


def _crf_labels(prob: np.ndarray, eps: float) -> np.ndarray:
    """``(C, ...)`` probabilities -> ``(L, ...)`` label probabilities clipped to ``[eps, 1 - eps]``."""
    if prob.shape[0] == 1:
        labels = np.concatenate([1.0 - prob, prob], axis=0)
    else:
        labels = prob / np.maximum(prob.sum(axis=0, keepdims=True), eps)
    return np.clip(labels, eps, 1.0 - eps).astype(np.float32)


def _binarize(q: torch.Tensor) -> torch.Tensor:
    """Hard mask from refined probabilities ``(C, ...)``: ``p >= 0.5`` if ``C == 1``, else one-hot argmax."""
    if q.shape[0] == 1:
        return (q >= 0.5).to(q.dtype)
    return torch.zeros_like(q).scatter_(0, q.argmax(dim=0, keepdim=True), 1.0)


class _GuidedCRF(Transform):
    """
    Base of the dense CRF transforms: input validation, guide scaling, binarisation and metadata.

    Subclasses implement :py:meth:`_crf` on validated tensors, so that both implementations check and convert
    their inputs and outputs in exactly the same way.

    Args:
        binarize: return the hard mask (``p >= 0.5`` for ``C == 1``, one-hot argmax otherwise).
        guide_scaling: ``"auto"``, ``"minmax"`` or ``"none"``, see :py:func:`scale_guide`.
    """

    def __init__(self, binarize: bool, guide_scaling: str) -> None:
        self.binarize = binarize
        self.guide_scaling = look_up_named_option("guide_scaling", guide_scaling, GUIDE_SCALINGS)

    def _crf(self, prob: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """
        Refine ``prob`` ``(C, *S)`` (floating point, in ``[0, 1]``) with ``guide`` ``(Cg, *S)`` (float32, 0..255).

        Returns:
            the refined probability ``(C, *S)`` on ``prob``'s device, with ``prob``'s dtype.
        """
        raise NotImplementedError(f"subclass {self.__class__.__name__} must implement this method.")

    def __call__(self, prob: NdarrayOrTensor, guide: NdarrayOrTensor, binarize: bool | None = None) -> torch.Tensor:
        """
        Args:
            prob: fused probability ``(C, H, W[, D])`` in ``[0, 1]``; ``C == 1`` for a binary problem.
            guide: channel-first image ``(Cg, H, W[, D])`` (``uint8`` or float), same spatial size as ``prob``.
            binarize: overrides ``self.binarize`` for this call.

        Returns:
            refined probability (or hard mask) ``(C, H, W[, D])`` with ``prob``'s metadata.

        Raises:
            ValueError: wrong ``prob`` dimensions, NaN or out-of-range ``prob``, or ``guide`` whose spatial size
                differs from ``prob``'s.
        """
        img, data = check_probability_map(prob, "prob")
        out = self._crf(data, scale_guide(guide, data.shape[1:], self.guide_scaling))
        if self.binarize if binarize is None else binarize:
            out = _binarize(out)
        return to_output(out, img)


class DenseCRF(_GuidedCRF):
    """
    Fully connected CRF refinement with ``pydensecrf`` (Krähenbühl and Koltun 2011), as used by DiffSeg.

    The unary is ``-log p`` of the label probabilities: for ``C == 1`` the two labels background ``1 - p`` and
    foreground ``p``; for ``C > 1`` the channels are taken as mutually exclusive class probabilities (softmax
    output including background) and renormalised. Probabilities are clipped to ``[eps, 1 - eps]``.
    Pairwise terms (Potts compatibility, symmetric kernel normalisation):

    - Gaussian ``exp(-|p_i - p_j|^2 / (2 gaussian_sxy^2))`` with weight ``gaussian_weight``;
    - bilateral ``exp(-|p_i - p_j|^2 / (2 bilateral_sxy^2) - |I_i - I_j|^2 / (2 bilateral_srgb^2))`` with weight
      ``bilateral_weight``, where ``I`` is the guide brought to 0..255 (:py:func:`scale_guide`).

    2D uses ``pydensecrf.densecrf.DenseCRF2D`` (``addPairwiseBilateral`` for RGB guides); grayscale/multi-channel
    2D guides and 3D volumes use the generic ``DenseCRF(n_voxels, n_labels)`` with
    ``pydensecrf.utils.create_pairwise_gaussian`` / ``create_pairwise_bilateral(..., chdim=0)``.

    Args:
        bilateral_sxy: spatial standard deviation (voxels) of the bilateral kernel, scalar or per spatial axis.
        bilateral_srgb: intensity standard deviation of the bilateral kernel (guide in 0..255).
        bilateral_weight: bilateral compatibility (pydensecrf ``compat``).
        gaussian_sxy: standard deviation (voxels) of the Gaussian kernel, scalar or per spatial axis.
        gaussian_weight: Gaussian compatibility (pydensecrf ``compat``).
        num_iterations: mean-field iterations.
        binarize: return the hard mask (``p >= 0.5`` for ``C == 1``, one-hot argmax otherwise).
        guide_scaling: ``"auto"``, ``"minmax"`` or ``"none"``, see :py:func:`scale_guide`.
        eps: probability clipping.

    Raises:
        OptionalImportError: when pydensecrf is not installed (``pip install "monai-diffseg[crf]"``).

    Example::

        fused = MeanEnsembleFusion()(samples)  # (1, H, W)
        refined = DenseCRF()(fused, image)  # image (3, H, W) uint8 or float -> (1, H, W)
    """

    backend = [TransformBackends.NUMPY]

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
    ) -> None:
        _store_crf_parameters(
            self, bilateral_sxy, bilateral_srgb, bilateral_weight, gaussian_sxy, gaussian_weight, num_iterations, eps
        )
        _import_pydensecrf()
        super().__init__(binarize, guide_scaling)

    def _refine(self, labels: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """Mean-field inference; ``labels`` ``(L, *S)`` float32, ``guide`` ``(Cg, *S)`` float32 in 0..255."""
        dcrf, utils = _import_pydensecrf()
        n_labels, spatial = labels.shape[0], labels.shape[1:]
        spatial_dims = len(spatial)
        g_sxy = _per_axis(self.gaussian_sxy, spatial_dims, "gaussian_sxy")
        b_sxy = _per_axis(self.bilateral_sxy, spatial_dims, "bilateral_sxy")
        unary = np.ascontiguousarray(utils.unary_from_softmax(labels, clip=None), dtype=np.float32)
        if spatial_dims == 2:
            height, width = spatial
            crf = dcrf.DenseCRF2D(width, height, n_labels)
        else:
            crf = dcrf.DenseCRF(int(np.prod(spatial)), n_labels)
        crf.setUnaryEnergy(unary)
        if self.gaussian_weight != 0:
            feats = utils.create_pairwise_gaussian(sdims=g_sxy, shape=spatial)
            crf.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=self.gaussian_weight)
        if self.bilateral_weight != 0:
            if spatial_dims == 2 and guide.shape[0] == 3 and b_sxy[0] == b_sxy[1]:
                rgb = np.ascontiguousarray(np.moveaxis(guide, 0, -1).astype(np.uint8))  # (H, W, 3)
                crf.addPairwiseBilateral(
                    sxy=b_sxy[0], srgb=self.bilateral_srgb, rgbim=rgb, compat=self.bilateral_weight
                )
            else:
                schan = (self.bilateral_srgb,) * guide.shape[0]
                feats = utils.create_pairwise_bilateral(sdims=b_sxy, schan=schan, img=guide, chdim=0)
                crf.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=self.bilateral_weight)
        q = np.array(crf.inference(self.num_iterations), dtype=np.float32)
        return q.reshape(n_labels, *spatial)

    def _crf(self, prob: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """pydensecrf runs on CPU numpy arrays: convert, refine, and keep the foreground label for ``C == 1``."""
        labels = _crf_labels(prob.detach().cpu().numpy().astype(np.float32), self.eps)
        q = self._refine(labels, guide.numpy().astype(np.float32))
        return torch.as_tensor(q[1:] if prob.shape[0] == 1 else q, device=prob.device).to(prob.dtype)


class TorchDenseCRFFusion(_GuidedCRF):
    """
    Dense CRF refinement in pure PyTorch (:py:class:`monai_diffseg.networks.blocks.torch_crf.TorchDenseCRF`).

    Same inputs, outputs, parameters and defaults as :py:class:`DenseCRF`, but the bilateral kernel is evaluated over
    a local window of ``window_size`` taps spaced by ``dilation`` voxels (ConvCRF-style) instead of the whole
    image, so DiffSeg's ``bilateral_sxy=80`` is effectively truncated to the window reach. It runs on the device of
    ``prob`` (GPU if available), in 2D and 3D, with no compiled dependency.

    Args:
        bilateral_sxy: spatial standard deviation (voxels) of the bilateral kernel, scalar or per spatial axis.
        bilateral_srgb: intensity standard deviation of the bilateral kernel (guide in 0..255).
        bilateral_weight: bilateral compatibility (pydensecrf ``compat``).
        gaussian_sxy: standard deviation (voxels) of the Gaussian kernel, scalar or per spatial axis.
        gaussian_weight: Gaussian compatibility (pydensecrf ``compat``).
        num_iterations: mean-field iterations.
        window_size: odd number of bilateral window taps per axis (``None``: 11 in 2D, 7 in 3D).
        dilation: voxel spacing of the bilateral window taps (``None``: 4 in 2D, 3 in 3D).
        binarize: return the hard mask (``p >= 0.5`` for ``C == 1``, one-hot argmax otherwise).
        guide_scaling: ``"auto"``, ``"minmax"`` or ``"none"``, see :py:func:`scale_guide`.
        eps: probability clipping.

    Example::

        refined = TorchDenseCRFFusion()(fused, image)  # fused (1, H, W), image (3, H, W) -> (1, H, W)
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        bilateral_sxy: float | Sequence[float] = 80.0,
        bilateral_srgb: float = 13.0,
        bilateral_weight: float = 10.0,
        gaussian_sxy: float | Sequence[float] = 3.0,
        gaussian_weight: float = 3.0,
        num_iterations: int = 5,
        window_size: int | None = None,
        dilation: int | None = None,
        binarize: bool = False,
        guide_scaling: str = "auto",
        eps: float = 1e-5,
    ) -> None:
        self.crf = TorchDenseCRF(
            bilateral_sxy=bilateral_sxy,
            bilateral_srgb=bilateral_srgb,
            bilateral_weight=bilateral_weight,
            gaussian_sxy=gaussian_sxy,
            gaussian_weight=gaussian_weight,
            num_iterations=num_iterations,
            window_size=window_size,
            dilation=dilation,
            eps=eps,
        )
        super().__init__(binarize, guide_scaling)

    def _crf(self, prob: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Batch of one on ``prob``'s device; no gradients, as a transform (use :py:class:`TorchDenseCRF` to train)."""
        with torch.no_grad():
            return self.crf(prob[None], guide.to(prob.device)[None])[0]
