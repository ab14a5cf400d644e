# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
What MONAI Label 0.8.5 does with a bundle, re-enacted without importing MONAI Label (it lives in its own venv).

Each step follows ``monailabel/tasks/infer/bundle.py`` (``BundleInferTask``), ``tasks/infer/basic_infer.py``
(``BasicInferTask.__call__``, ``_get_network``, ``run_inferer``), ``transform/pre.py`` (``LoadImageTensord``),
``transform/post.py`` (``Restored``), ``transform/writer.py`` (``Writer``, ``write_itk``) and
``tasks/train/bundle.py`` (``BundleTrainTask``) of monailabel 0.8.5; each step names the original it re-enacts.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai.bundle
import numpy as np
import torch
from monai.bundle import ConfigItem, ConfigParser
from monai.data import MetaTensor, decollate_batch, partition_dataset
from monai.inferers import SimpleInferer
from monai.transforms import Compose, LoadImaged, Resize, SaveImaged

__all__ = ["ServedInfer", "serve_infer", "serve_train", "write_itk_and_read_back"]


class ServedInfer:
    """``BundleInferTask.__init__``: the inference config, network, labels as MONAI Label builds them."""

    def __init__(self, bundle: str | os.PathLike, device: str = "cpu") -> None:
        self.path = str(bundle)
        configs = [
            c for c in ("inference.json", "inference.yaml") if os.path.exists(os.path.join(self.path, "configs", c))
        ]
        if not configs:
            raise FileNotFoundError(f"{self.path}: no configs/inference.json (MONAI Label ignores the bundle)")
        self.config = ConfigParser()
        self.config.read_config(os.path.join(self.path, "configs", configs[0]))
        self.config.config.update({"bundle_root": self.path})
        self.config.config["use_click"] = False
        model_path = os.path.join(self.path, "models", "model.pt")
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"{model_path}: MONAI Label needs models/model.pt (or model.ts)")
        self.model_path = model_path
        self.network = self.config.get_parsed_content("network_def", instantiate=True)
        with open(os.path.join(self.path, "configs", "metadata.json")) as fp:
            metadata = json.load(fp)
        self.key_image, image = next(iter(metadata["network_data_format"]["inputs"].items()))
        self.key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
        self.labels = {v.lower(): int(k) for k, v in pred.get("channel_def", {}).items() if v.lower() != "background"}
        spatial_shape = image.get("spatial_shape")
        self.dimension = len(spatial_shape) if spatial_shape else 3
        self.device = device

    def _update_device(self) -> None:  # BundleInferTask._update_device
        self.config.config.update({"device": self.device})
        if self.config.ref_resolver.items.get("device"):
            self.config.ref_resolver.items["device"] = ConfigItem(config=self.device, id="device")

    def pre_transforms(self) -> list:  # BundleInferTask.pre_transforms
        self._update_device()
        pre: Any = []
        for k in ("preprocessing", "pre_transforms"):  # the last one present wins
            if self.config.get(k):
                c = self.config.get_parsed_content(k, instantiate=True)
                pre = list(c.transforms) if isinstance(c, Compose) else c
        for t in pre:
            if isinstance(t, LoadImaged):
                t._loader.image_only = False
        return [LoadImageTensord(t) if isinstance(t, LoadImaged) else t for t in pre]

    def inferer(self) -> Any:
        self._update_device()
        return (
            self.config.get_parsed_content("inferer", instantiate=True)
            if self.config.get("inferer")
            else SimpleInferer()
        )

    def post_transforms(self) -> list:  # BundleInferTask.post_transforms with post_filter=[SaveImaged]
        self._update_device()
        post: Any = []
        for k in ("postprocessing", "post_transforms"):  # the last one present wins
            if self.config.get(k):
                c = self.config.get_parsed_content(k, instantiate=True)
                post = list(c.transforms) if isinstance(c, Compose) else c
        post = [t for t in post if not isinstance(t, SaveImaged)]
        post.append(Restored(key=self.key_pred, ref_image=self.key_image))
        return post

    def get_network(self) -> torch.nn.Module:  # BasicInferTask._get_network (load_strict=False)
        network = self.network.to(torch.device(self.device))
        checkpoint = torch.load(self.model_path, map_location=torch.device(self.device))
        state = checkpoint.get("model", checkpoint)
        network.load_state_dict(state, strict=False)
        network.eval()
        return network

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """``BasicInferTask.__call__``: pre-transforms, inferer, (no inverse), post-transforms, writer."""
        data = dict(request)
        data["device"] = self.device
        data["image_path"] = request["image"]
        for t in self.pre_transforms():  # run_transforms(..., use_compose=False)
            data = t(data)
        inferer, network = self.inferer(), self.get_network()
        inputs = data[self.key_image]
        inputs = (inputs if torch.is_tensor(inputs) else torch.from_numpy(inputs))[None].to(torch.device(self.device))
        with torch.no_grad():
            outputs = inferer(inputs, network)
        data["pred"] = decollate_batch(outputs)[0] if isinstance(outputs, dict) else outputs[0]
        for t in self.post_transforms():
            data = t(data)
        return writer(data), data


class LoadImageTensord:  # monailabel.transform.pre.LoadImageTensord: keys of the wrapped LoadImaged, no missing keys
    def __init__(self, load_image_d: LoadImaged) -> None:
        self.keys, self.load_image_d = load_image_d.keys, load_image_d

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.keys:
            if not isinstance(d[key], str):  # KeyError for a key that an unlabelled request does not have
                raise NotImplementedError("numpy input is not re-enacted here")
        return self.load_image_d(d)


class Restored:  # monailabel.transform.post.Restored(keys="pred", ref_image="image"), has_channel=True, nearest
    def __init__(self, key: str, ref_image: str) -> None:
        self.key, self.ref_image = key, ref_image

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        ref = d.get(self.ref_image)
        meta = ref.meta if isinstance(ref, MetaTensor) else d.get(f"{self.ref_image}_meta_dict", {})
        result = d[self.key]
        current_size = result.shape[1:]
        spatial_shape = meta.get("spatial_shape", current_size)
        spatial_size = spatial_shape[-len(current_size) :]
        if np.any(np.not_equal(current_size, spatial_size)):
            result = Resize(spatial_size=spatial_size, mode="nearest")(result, mode="nearest", align_corners=None)
        d[self.key] = result if len(result.shape) <= 3 else result[0] if result.shape[0] == 1 else result
        out_meta = d.get(f"{self.key}_meta_dict")
        if out_meta is None:  # absent, or None as Invertd leaves it
            out_meta = d[f"{self.key}_meta_dict"] = {}
        out_meta["affine"] = meta.get("original_affine")
        return d


def writer(data: dict[str, Any]) -> str | None:
    """``Writer(label="pred", json="result")``: the label file MONAI Label sends back (ext of the input image)."""
    path = data.get("image_path")
    ext = data.get("result_extension") or (_file_ext(path) if path else None)
    if not ext:
        return None
    pred = data["pred"]
    image_np = pred.array if isinstance(pred, MetaTensor) else pred
    if len(image_np.shape) == 4 and image_np.shape[0] > 1:
        raise AssertionError("a multi-channel 4D label goes to seg.nrrd; not expected from these bundles")
    meta = data.get("pred_meta_dict")
    affine = meta.get("affine") if meta else None
    if affine is None and isinstance(pred, MetaTensor):
        affine = pred.affine
    output = tempfile.NamedTemporaryFile(suffix=ext, delete=False).name
    write_itk(image_np, output, affine if len(image_np.shape) > 2 else None, data.get("result_dtype"))
    return output


def write_itk(image_np: Any, output_file: str, affine: Any, dtype: Any) -> None:  # monailabel.transform.writer
    import itk

    if isinstance(image_np, torch.Tensor):
        image_np = image_np.numpy()
    if isinstance(affine, torch.Tensor):
        affine = affine.numpy()
    if len(image_np.shape) >= 2:
        image_np = image_np.transpose().copy()
    if dtype:
        image_np = image_np.astype(dtype)
    result_image = itk.image_from_array(image_np)
    if affine is not None:
        convert = np.diag([-1, -1, 1, 1]) if affine.shape[0] != 3 else np.diag([-1, -1, 1])
        affine = convert @ affine
        dim = affine.shape[0] - 1
        origin = affine[(slice(-1), -1)]
        spacing = np.linalg.norm(affine[(slice(-1), slice(-1))] @ np.eye(dim), axis=0)
        direction = affine[(slice(-1), slice(-1))] @ np.diag(1 / spacing)
        result_image.SetDirection(itk.matrix_from_array(direction))
        result_image.SetSpacing(spacing)
        result_image.SetOrigin(origin)
    itk.imwrite(result_image, output_file, False)


def write_itk_and_read_back(image_np: Any, ext: str) -> np.ndarray:
    """Write like MONAI Label and read the file back as ``(H, W)`` with PIL (what a client displays)."""
    from PIL import Image

    out = tempfile.NamedTemporaryFile(suffix=ext, delete=False).name
    try:
        write_itk(image_np, out, None, None)
        return np.asarray(Image.open(out))
    finally:
        os.remove(out)


def _file_ext(name: str) -> str:  # monailabel.utils.others.generic.file_ext for plain names
    suffixes = Path(name).suffixes
    return "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else (suffixes[-1] if suffixes else "")


def serve_infer(bundle: str | os.PathLike, image: str, device: str = "cpu", **params: Any) -> tuple[Any, dict]:
    """One ``/infer`` request: returns (label file written by the writer, the post-processed data dict)."""
    return ServedInfer(bundle, device)({"image": image, **params})


def serve_train(
    bundle: str | os.PathLike,
    datalist: Sequence[dict[str, str]],
    max_epochs: int,
    val_split: float = 0.2,
    pretrained: bool = True,
    device: str = "cpu",
    extra: dict[str, Any] | None = None,
) -> None:
    """
    One ``/train`` request (``BundleTrainTask.__call__``, single device). ``extra``: further overrides, only to make
    the test small (a tiny network); MONAI Label itself sends none.
    """
    path = str(bundle)
    config_path = os.path.join(path, "configs", "train.json")
    config = ConfigParser()
    config.read_config(config_path)
    config.config.update({"bundle_root": path})
    datalist = [{"image": d["image"], "label": d["label"]} for d in datalist if d]  # _fetch_datalist
    if val_split > 0.0:  # _partition_datalist
        train_ds, val_ds = partition_dataset(datalist, ratios=[(1 - val_split), val_split], shuffle=False)
    else:
        train_ds, val_ds = datalist, (None if val_split < 0 else [])
    train_handlers = config.get("train#handlers", [])
    model_pytorch = os.path.join(path, "models", "model.pt")
    if pretrained and os.path.exists(model_pytorch):  # _load_checkpoint
        if not [t for t in train_handlers if t.get("_target_") == "CheckpointLoader"]:
            train_handlers.insert(
                0,
                {
                    "_target_": "CheckpointLoader",
                    "load_path": model_pytorch,
                    "load_dict": {"model": "$@network"},
                    "strict": False,
                },
            )
    overrides: dict[str, Any] = {
        "bundle_root": path,
        "train#trainer#max_epochs": max_epochs,
        "train#dataset#data": train_ds,
        "device": device,
        "train#handlers": train_handlers,
    }
    if val_ds is not None:
        overrides["validate#dataset#data"] = val_ds
    monai.bundle.run(
        run_id="run",
        init_id=None,
        final_id=None,
        meta_file=os.path.join(path, "configs", "metadata.json"),
        config_file=config_path,
        **overrides,
        **(extra or {}),
    )
