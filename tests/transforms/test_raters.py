# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Rater transforms: loading the stack, drawing one rater, majority/agreement with the tie rule, ensemble layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_diffseg.transforms import LoadImage2Dd, LoadRatersd, RandRaterd, RaterConsensusd, RatersToEnsembled


def _png(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture()
def item(tmp_path: Path) -> dict:
    (tmp_path / "case07").mkdir()
    h, w = 4, 6
    masks = np.zeros((4, h, w), dtype=np.uint8)
    masks[0, :2] = 255  # rows 0-1
    masks[1, :3] = 255  # rows 0-2
    masks[2, 1:3] = 1  # {0, 1} masks are accepted as well
    masks[3, 0, 0] = 255
    raters = [_png(tmp_path / "case07" / f"rater{k}.png", m) for k, m in enumerate(masks, start=1)]
    image = _png(tmp_path / "case07" / "image.png", np.arange(h * w).reshape(h, w) * 10)
    return {"image": image, "raters": raters, "case": "case07"}


def test_load_stack_named_by_case(item: dict) -> None:
    d = LoadRatersd()(LoadImage2Dd("image", "L")(item))
    stack = d["raters"]
    assert stack.shape == (4, 6, 4)  # (R, W, H), PILReader's axis order like the image
    assert set(stack.unique().tolist()) == {0.0, 1.0}
    assert stack[1].T.sum() == 18 and stack[3].T[0, 0] == 1
    assert stack.meta["filename_or_obj"].endswith("case07/case07.raters")


def test_single_label_is_one_rater(item: dict) -> None:
    """MONAI Label lists {"image", "label"}: the label is read as the only rater; "raters" wins when present."""
    single = {"image": item["image"], "label": item["raters"][1]}
    d = LoadRatersd(single_key="label")(LoadImage2Dd("image", "L")(single))
    assert d["raters"].shape == (1, 6, 4) and d["raters"].sum() == 18
    both = LoadRatersd(single_key="label")(LoadImage2Dd("image", "L")({**item, "label": item["raters"][1]}))
    assert both["raters"].shape == (4, 6, 4)


def test_load_rejects_size_mismatch_and_non_binary(item: dict, tmp_path: Path) -> None:
    _png(Path(item["raters"][2]), np.zeros((5, 6)))
    with pytest.raises(ValueError, match=r"rater3.png' is 6x5 \(WxH\) but 'image' is 6x4"):
        LoadRatersd()(LoadImage2Dd("image", "L")(item))
    _png(Path(item["raters"][2]), np.full((4, 6), 128))
    with pytest.raises(ValueError, match="rater3.png"):
        LoadRatersd()(LoadImage2Dd("image", "L")(item))
    assert LoadRatersd(threshold=127)(LoadImage2Dd("image", "L")(item))["raters"][2].sum() == 24
    with pytest.raises(ValueError, match="lists no rater mask"):
        LoadRatersd()({"raters": [], "case": "x"})


def test_majority_tie_rule_and_agreement() -> None:
    stack = torch.zeros(4, 1, 3)
    stack[:1, 0, 0] = 1  # 1 of 4
    stack[:2, 0, 1] = 1  # 2 of 4: the tie
    stack[:3, 0, 2] = 1  # 3 of 4
    fg = RaterConsensusd()({"raters": stack})
    assert fg["label"].flatten().tolist() == [0.0, 1.0, 1.0]
    assert fg["agreement"].flatten().tolist() == [0.25, 0.5, 0.75]
    bg = RaterConsensusd(tie="background", agreement_key=None)({"raters": stack})
    assert bg["label"].flatten().tolist() == [0.0, 0.0, 1.0] and "agreement" not in bg
    odd = RaterConsensusd()({"raters": stack[:3]})  # 3 raters: 1/3, 2/3, 3/3 -> no tie possible
    assert odd["label"].flatten().tolist() == [0.0, 1.0, 1.0]


def test_consensus_takes_the_image_metadata(item: dict) -> None:
    d = RaterConsensusd(meta_key="image")(LoadRatersd()(LoadImage2Dd("image", "L")(item)))
    assert d["agreement"].meta["filename_or_obj"].endswith("case07/image.png")


def test_rand_rater_uniform_and_seeded() -> None:
    stack = torch.arange(3.0).reshape(3, 1, 1).expand(3, 2, 2).clone()
    t = RandRaterd(index_key="k").set_random_state(seed=5)
    draws = [t({"raters": stack}) for _ in range(300)]
    assert all(torch.equal(d["label"], stack[d["k"] : d["k"] + 1]) for d in draws)
    counts = np.bincount([d["k"] for d in draws], minlength=3)
    assert counts.min() > 70  # about 100 each
    again = RandRaterd(index_key="k").set_random_state(seed=5)
    assert [again({"raters": stack})["k"] for _ in range(300)] == [d["k"] for d in draws]


def test_raters_to_ensemble_layout() -> None:
    out = RatersToEnsembled("raters")({"raters": torch.ones(7, 5, 4)})["raters"]
    assert out.shape == (7, 1, 5, 4) and type(out) is torch.Tensor
