# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Every bundle is drop-in ready for MONAI Label 0.8.5's bundle tasks, checked by re-enacting what MONAI Label does
with a bundle folder (``monailabel_emulation``: its config ids, loader wrapping, ``post_transforms`` override,
``SaveImaged`` filter, ``Restored``, ITK writer and ``/train`` overrides) on synthetic data, without MONAI Label.

Each bundle is copied into a temporary folder with a tiny network written into its configs (MONAI Label passes no
overrides), and served from there: ``/infer`` on an unlabelled image, ``/train`` twice on 2 labelled images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import ROOT, TINY_NETWORKS
from monai.bundle import ConfigParser, ConfigWorkflow
from monailabel_emulation import ServedInfer, serve_infer, serve_train
from PIL import Image

from monai_diffseg.transforms import MasksToLabelMapd

BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())
SIZE = (40, 56)  # (H, W) of most synthetic images: not square, not the network size

# small and fast settings on top of TINY_NETWORKS (identical in train and inference where both have the key)
FAST: dict[str, dict] = {
    "medsegdiff_isic2018": {"num_samples": 2, "num_inference_steps": 2, "val_num_samples": 2},
    "medsegdiff_polyp": {"num_samples": 2, "num_inference_steps": 2, "val_num_samples": 2},
    "diffseg_isic2018": {"timesteps": [60, 100], "healthy_num_epochs": 1, "batch_size": 8},
    "medsegdiff_thyroid_ddti": {"num_samples": 2, "num_inference_steps": 2, "val_num_samples": 2},
    "medsegdiff_fundus_disc_cup": {
        "num_samples": 2,
        "num_inference_steps": 2,
        "coarse_num_inference_steps": 1,
        "val_num_samples": 2,
    },
    "medsegdiff_multirater": {"num_samples": 2, "num_inference_steps": 2, "val_num_samples": 2},
}


def _isic(root: Path) -> list[dict[str, str]]:
    from monai_diffseg.data import isic2018_datalist, make_synthetic_isic2018

    data = make_synthetic_isic2018(str(root), num_train=3, num_val=0, num_test=0, image_size=SIZE, seed=5)
    return isic2018_datalist(data, split="training")


def _polyp(root: Path) -> list[dict[str, str]]:
    from monai_diffseg.data import make_synthetic_kvasir_seg, polyp_datalist

    data = make_synthetic_kvasir_seg(str(root), num_cases=3, image_size=SIZE, seed=5, mixed_sizes=False)
    return polyp_datalist(data, dataset_format="kvasir_seg")


def _ddti(root: Path) -> list[dict[str, str]]:
    from monai_diffseg.data import ddti_datalist, make_synthetic_ddti

    return ddti_datalist(make_synthetic_ddti(str(root), "folders", num_patients=2, crop_size=48, seed=5))


def _refuge(root: Path) -> list[dict[str, str]]:
    from monai_diffseg.data import fundus_datalist, make_synthetic_refuge

    data = make_synthetic_refuge(str(root), num_train=3, num_val=0, num_test=0, image_size=SIZE, seed=5)
    return fundus_datalist(data, split="training")


def _raters(root: Path) -> list[dict[str, str]]:
    from monai_diffseg.data import make_synthetic_case_folders, multirater_datalist

    data = make_synthetic_case_folders(str(root), num_cases=3, num_raters=3, image_size=SIZE, seed=5)
    return [{"image": d["image"], "label": d["raters"][0]} for d in multirater_datalist(data, split=None)]


def _binary_label_map(path: str) -> np.ndarray:
    """A 0/255 (or lossy JPEG) archive mask as the 0/1 label map MONAI Label stores."""
    return (np.asarray(Image.open(path).convert("L")) > 127).astype(np.uint8)


def _refuge_label_map(path: str) -> np.ndarray:
    """REFUGE's coded mask (0 cup, 128 rim, 255 background) as the served map: 0 background, 1 rim, 2 cup."""
    code = np.asarray(Image.open(path).convert("L"))
    return np.select([code < 64, code < 192], [2, 1], 0).astype(np.uint8)


# bundle -> (synthetic labelled data list, archive label -> the label map MONAI Label would store)
DATA: dict[str, tuple[Callable[[Path], list[dict]], Callable[[str], np.ndarray]]] = {
    "medsegdiff_isic2018": (_isic, _binary_label_map),
    "diffseg_isic2018": (_isic, _binary_label_map),
    "medsegdiff_polyp": (_polyp, _binary_label_map),
    "medsegdiff_thyroid_ddti": (_ddti, _binary_label_map),
    "medsegdiff_fundus_disc_cup": (_refuge, _refuge_label_map),
    "medsegdiff_multirater": (_raters, _binary_label_map),
}
SERVED = sorted(DATA)


def _served_copy(bundle: str, dest: Path) -> Path:
    """The bundle folder copied to ``dest`` with the tiny, fast settings written into its configs."""
    shutil.copytree(ROOT / "bundles" / bundle, dest, ignore=shutil.ignore_patterns("models", "eval"))
    settings = {**TINY_NETWORKS[bundle], **FAST.get(bundle, {})}
    for name in ("inference.json", "train.json"):
        parser = ConfigParser()
        parser.read_config(str(dest / "configs" / name))
        for key, value in settings.items():
            if key.split("#")[0] in parser.config:
                parser[key] = value
        ConfigParser.export_config_file(parser.config, str(dest / "configs" / name), indent=4)
    return dest


def _datastore(bundle: str, root: Path) -> list[dict[str, str]]:
    """Labelled items as MONAI Label's datastore lists them: the image and the label map it stores (PNG)."""
    make, to_label_map = DATA[bundle]
    items = make(root / "archive")
    (root / "labels").mkdir()
    store = []
    for i, item in enumerate(items):
        label = root / "labels" / f"case{i}.png"
        Image.fromarray(to_label_map(item["label"])).save(label)
        store.append({"image": item["image"], "label": str(label)})
    return store


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _channel_def(bundle: str | Path) -> dict[str, str]:
    folder = bundle if isinstance(bundle, Path) else ROOT / "bundles" / bundle
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    return next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"]


def _random_model(bundle_dir: Path) -> None:
    """A ``models/model.pt`` for ``network_def`` (MONAI Label serves a bundle only when it has one); seed 1 gives
    every tiny network a served map with foreground and background, so that comparing maps means something."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    torch.manual_seed(1)
    network = parser.get_parsed_content("network_def")
    (bundle_dir / "models").mkdir(exist_ok=True)
    torch.save({"model": network.state_dict()}, bundle_dir / "models" / "model.pt")


# ------------------------------------------------------------------------------------------------ static properties
def test_every_bundle_is_served_here_or_in_its_own_tests() -> None:
    # medsegdiff_brats (3D, BraTS label values 0/1/2/4) re-enacts MONAI Label in tests/bundles/test_brats_bundle.py
    assert set(BUNDLES) - set(SERVED) <= {"medsegdiff_brats"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_channel_def_starts_with_background(bundle: str) -> None:
    channel_def = _channel_def(bundle)
    assert next(iter(channel_def.items())) == ("0", "background"), channel_def


@pytest.mark.parametrize("bundle", SERVED)
def test_channel_def_names_every_served_value(bundle: str) -> None:
    channel_def = _channel_def(bundle)
    assert sorted(map(int, channel_def)) == list(range(len(channel_def)))
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    post = parser.get_parsed_content("post_transforms")
    label_map = post.transforms[-1]
    assert isinstance(label_map, MasksToLabelMapd), "post_transforms must end with the label map"
    values = label_map.converter.values
    channels = len(values)
    served = set()
    for on in range(1, 2**channels):  # every combination of channels on: the values a served map can hold
        masks = torch.tensor([(on >> c) & 1 for c in range(channels)], dtype=torch.float32)[:, None, None]
        served |= set(label_map({"pred": masks.expand(-1, 2, 2)})["pred"].unique().tolist())
    assert served == set(map(int, channel_def)) - {0}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_top_level_loaders_read_the_image_only_and_nothing_is_written_when_served(bundle: str) -> None:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    for t in parser.get_parsed_content("preprocessing").transforms:  # MONAI Label wraps these, label or not
        if type(t).__name__.startswith("Load"):
            assert tuple(t.keys) == ("image",), f"{type(t).__name__} loads {t.keys}: MONAI Label /infer has no label"
    post = parser.get_parsed_content("post_transforms")  # MONAI Label's post chain: it replaces postprocessing
    writers = [type(t).__name__ for t in post.flatten().transforms if "Save" in type(t).__name__]
    assert not writers, f"post_transforms writes files into the served bundle: {writers}"


# ----------------------------------------------------------------------------------------------------------- /infer
@pytest.fixture(scope="module", params=SERVED)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, list]:
    bundle = request.param
    root = tmp_path_factory.mktemp(bundle)
    return bundle, _served_copy(bundle, root / "bundle"), _datastore(bundle, root)


def test_infer_serves_a_label_map_in_the_image_geometry(served: tuple[str, Path, list], tmp_path: Path) -> None:
    bundle, bundle_dir, store = served
    _random_model(bundle_dir)
    before = _tree(bundle_dir)
    image = store[0]["image"]
    # as a client asks for a lossless result (the default is the input's format: JPEG for ISIC and Kvasir)
    label_file, data = serve_infer(bundle_dir, image, result_extension=".png")
    assert _tree(bundle_dir) == before, "serving wrote into the bundle folder"
    size = Image.open(image).size[::-1]  # (H, W)
    served_map = np.asarray(Image.open(label_file))
    assert served_map.shape == size and served_map.dtype == np.uint8  # (H, W) of the input, one channel
    assert set(np.unique(served_map).tolist()) == set(map(int, _channel_def(bundle_dir)))
    assert data["pred"].shape == size[::-1]  # MONAI's (W, H) before the writer's transpose
    default_file, _ = serve_infer(bundle_dir, image)  # the input's format works too (lossy for JPEG)
    assert np.asarray(Image.open(default_file)).shape == size

    # the served map is the bundle's own mask: post_transforms shares postprocessing's steps, minus the writers
    own = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / "inference.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle_dir),
        datalist=[{"image": image}],
        dataset_dir=str(Path(image).parents[1]),  # the multi-rater writers keep the folders below it
        output_dir=str(tmp_path),
        **_ckpt_override(bundle, bundle_dir),
    )
    own.initialize()
    own.run()
    np.testing.assert_array_equal(served_map, _own_label_map(bundle, tmp_path))


def _own_label_map(bundle: str, output_dir: Path) -> np.ndarray:
    """The bundle's own written mask(s) (0/255 PNG) as a label map with the channel_def values."""
    names = ["disc_mask", "cup_mask"] if bundle == "medsegdiff_fundus_disc_cup" else ["mask"]
    masks = [np.asarray(Image.open(next(output_dir.rglob(f"*_{n}.png")))) > 127 for n in names]
    label = np.zeros(masks[0].shape, np.uint8)
    for value, mask in enumerate(masks, start=1):  # later structures (cup) over earlier ones (disc)
        label[mask] = value
    return label


def _ckpt_override(bundle: str, bundle_dir: Path) -> dict:
    """The bundle's own inference reads the served ``model.pt`` (DiffSeg: its two halves)."""
    if bundle != "diffseg_isic2018":
        return {"ckpt_path": str(bundle_dir / "models" / "model.pt")}
    state = torch.load(bundle_dir / "models" / "model.pt", weights_only=True)["model"]
    for half in ("lesion", "healthy"):
        part = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(half + ".")}
        torch.save({"model": part}, bundle_dir.parent / f"{half}.pt")
    return {"lesion_ckpt": str(bundle_dir.parent / "lesion.pt"), "healthy_ckpt": str(bundle_dir.parent / "healthy.pt")}


# ----------------------------------------------------------------------------------------------------------- /train
def _trainer_state(bundle_dir: Path, bundle: str) -> dict:
    name = "lesion_checkpoint_last.pt" if bundle == "diffseg_isic2018" else "checkpoint_last.pt"
    return torch.load(bundle_dir / "models" / name, weights_only=True)["trainer"]


def test_train_small_data_writes_model_pt_and_each_request_trains(served: tuple[str, Path, list]) -> None:
    bundle, bundle_dir, store = served
    models = bundle_dir / "models"
    shutil.rmtree(models, ignore_errors=True)  # a bundle as shipped without weights: /train starts from scratch
    serve_train(bundle_dir, store[:2], max_epochs=1)  # 2 labelled images, batch 8, val_split 0.2 -> 2 + 0
    state = _trainer_state(bundle_dir, bundle)
    assert state["iteration"] == 1 and state["epoch_length"] == 1  # one batch of 2: not an empty loader
    first = _digest(models / "model.pt")  # written although no validation ran

    serve_train(bundle_dir, store[:2], max_epochs=2)  # resume: true and a finished checkpoint: 2 more epochs
    assert _trainer_state(bundle_dir, bundle)["iteration"] == 3
    assert _digest(models / "model.pt") != first

    # what /infer then loads: model.pt matches network_def key for key (MONAI Label loads it with strict=False)
    infer = ServedInfer(bundle_dir)
    state = torch.load(models / "model.pt", weights_only=True)
    assert set(state.get("model", state)) == set(infer.network.state_dict())
    # and what the next /train warm-starts from: MONAI Label loads model.pt into train.json's `network`
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.json"))
    parser["device"] = "cpu"
    assert set(state.get("model", state)) == set(parser.get_parsed_content("network").state_dict())
