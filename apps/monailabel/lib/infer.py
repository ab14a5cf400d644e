# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
MONAI Label's bundle infer task for the diffusion bundles: the bundle runs unchanged; the task adds the ensemble's
uncertainty (scores in the result JSON, a voxel-wise map written next to the mask) from the members the bundle's
inferer already returns, and never lets the bundle's own writers run at serve time.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import SaveImaged
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.post import Restored
from monailabel.transform.writer import write_itk
from monailabel.utils.others.generic import file_ext, name_to_device

from lib.uncertainty import INFO_KEY, ensemble_scores, map_to_uint8, uncertainty_map
from monai_diffseg.transforms import SaveMapsd
from monai_diffseg.visualize import SaveOverlayd

__all__ = ["DiffusionBundleInferTask", "MAP_KEY"]

logger = logging.getLogger(__name__)

#: data key of the voxel-wise uncertainty map ``(1, *S)`` between the inferer and the writer.
MAP_KEY = "uncertainty_map"


class DiffusionBundleInferTask(BundleInferTask):
    """
    :class:`monailabel.tasks.infer.bundle.BundleInferTask` for a bundle whose inferer returns the ensemble members
    ``(N, E, C, *S)`` (``DiffusionSegmentationInferer(return_samples=True)`` and the inferers built on it).

    After the inferer, the member probabilities of the image give :func:`~lib.uncertainty.ensemble_scores` and an
    :func:`~lib.uncertainty.uncertainty_map`; the map is restored to the image's size like the mask and written as an
    8-bit image (255 = ``log 2`` nats). The result JSON gets ``ensemble_uncertainty``: the three scores, ``map``,
    ``num_samples`` and ``file`` (the map's temporary path, which the app moves into the datastore).

    Args:
        path: the served bundle folder.
        conf: the app's settings.
        overrides: config ids set in ``configs/inference.json`` after reading it (e.g. a smaller network).
        uncertainty_map: ``"entropy"`` or ``"mutual_information"``: the map written for each /infer.
        kwargs: passed to ``BundleInferTask``.
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        overrides: dict[str, Any] | None = None,
        uncertainty_map: str = "entropy",
        **kwargs: Any,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.uncertainty_kind = uncertainty_map
        # MONAI Label drops only SaveImaged; our writers would put files into the bundle folder at every /infer
        kwargs.setdefault("post_filter", [SaveImaged, SaveMapsd, SaveOverlayd])
        super().__init__(path, conf, **kwargs)

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        parser = super()._load_bundle_config(path, config)
        if self.overrides:
            parser.update(self.overrides)
        return parser

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        samples = data.get(self.output_label_key)
        if isinstance(samples, torch.Tensor) and samples.ndim == self.dimension + 2:
            data[INFO_KEY] = dict(ensemble_scores(samples), num_samples=int(samples.shape[0]))
            data[MAP_KEY] = uncertainty_map(samples, self.uncertainty_kind).cpu()
        else:
            shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            logger.warning(
                f"{os.path.basename(self.bundle_path)}: the inferer returned {shape}, not ensemble members "
                f"(E, C, *spatial) of a {self.dimension}D image; no uncertainty (set return_samples in its inferer)."
            )
        return data

    def post_transforms(self, data: dict[str, Any] | None = None) -> list:
        post = list(super().post_transforms(data))
        if data is not None and MAP_KEY in data:
            post.append(Restored(keys=MAP_KEY, ref_image=self.key_image, mode="bilinear"))
        return post

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        image_ext = file_ext(str(data.get("image_path") or "")).lower()
        if extension is None and not data.get("result_extension") and image_ext in (".jpg", ".jpeg"):
            extension = ".png"  # a label map must not go through lossy JPEG
        result_file, result_json = super().writer(data, extension=extension, dtype=dtype)
        if INFO_KEY in data:
            info = dict(data[INFO_KEY], map=self.uncertainty_kind, map_scale="uint8, 255 = log(2) nats")
            if MAP_KEY in data:
                info["file"] = self._write_map(data, ".png" if self.dimension == 2 else ".nii.gz")
            result_json[INFO_KEY] = info
        return result_file, result_json

    def _write_map(self, data: dict[str, Any], ext: str) -> str:
        values = torch.as_tensor(data[MAP_KEY]).detach().cpu()
        if values.ndim == self.dimension + 1:
            values = values[0]
        meta = data.get(f"{MAP_KEY}_meta_dict") or {}
        affine = meta.get("affine") if self.dimension == 3 else None
        path = tempfile.NamedTemporaryFile(suffix=ext, delete=False).name
        write_itk(map_to_uint8(values).numpy(), path, affine, "uint8", self.dimension == 3)
        return path

    def score_image(self, image: str, device: str | None = None) -> dict[str, Any]:
        """
        One ensemble inference of ``image`` (a file path) without post-processing or writing.

        Returns:
            the :func:`~lib.uncertainty.ensemble_scores` and ``num_samples``.

        Raises:
            ValueError: the bundle's inferer does not return ensemble members.
        """
        device = name_to_device(device)
        data = copy.deepcopy(self._config)
        data.update({"image": image, "image_path": image, "device": device})
        data = self.run_pre_transforms(data, self.pre_transforms(data))
        data = self.run_inferer(data, device=device)
        if INFO_KEY not in data:
            raise ValueError(
                f"bundle '{self.bundle_path}': its inferer does not return the ensemble members (E, C, *spatial), "
                "so it cannot be scored; set `return_samples: true` in its inference.json `inferer`."
            )
        return data[INFO_KEY]
