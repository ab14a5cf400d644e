# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Group-aware ``split_datalist``: no group on two sides, sizes at the item targets, the ungrouped split unchanged."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from monai_diffseg.data import split_datalist
from monai_diffseg.data.splits import _target_counts

hypothesis = pytest.importorskip("hypothesis")  # the ``test`` extra
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# a DDTI-like list: patient p has frames, each frame 1 or 2 nodule crops ("<p>_<f>" or "<p>_<f>(<k>)")
_DDTI_CASES = ["1_1", "2_1(1)", "2_1(2)", "3_1", "3_2", "4_1(1)", "4_1(2)", "4_2", "5_1", "6_1(1)", "6_1(2)", "7_3"]


def _items(cases: list[str]) -> list[dict[str, str]]:
    return [{"image": f"/d/images/{c}.png", "case": c} for c in cases]


def _groups_of(part: list[dict], regex_group) -> set:
    return {regex_group(d["case"]) for d in part}


def test_ungrouped_split_is_unchanged() -> None:
    """The published seed-0 split (test_isic2018 pins the values) and a grouping by unique case both reproduce it."""
    items = [{"case": str(i)} for i in range(150)]
    old = split_datalist(items, (0.7, 0.1, 0.2), seed=0)
    assert [int(d["case"]) for d in old[1]] == [26, 40, 41, 45, 49, 51, 62, 63, 86, 96, 101, 112, 128, 135, 146]
    # one item per group: the grouped path draws the same permutation and cuts at the same counts
    assert split_datalist(items, (0.7, 0.1, 0.2), seed=0, group_fn=lambda d: d["case"]) == old
    assert split_datalist(items, (0.7, 0.1, 0.2), seed=0, group_regex=r".+") == old
    for fractions in ((0.5, 0.0, 0.5), (0.8, 0.2), (0.34, 0.33, 0.33)):
        for seed in (1, 7):
            assert split_datalist(items[:23], fractions, seed, group_fn=lambda d: d["case"]) == split_datalist(
                items[:23], fractions, seed
            )


def test_group_regex_keeps_patients_and_frames_together(caplog: pytest.LogCaptureFixture) -> None:
    items = _items(_DDTI_CASES)
    with caplog.at_level(logging.INFO, logger="monai_diffseg.data.splits"):
        train, val = split_datalist(items, (0.75, 0.25), seed=3, group_regex=r"^(\d+)_")
    assert len(train) + len(val) == 12 and (len(train), len(val)) == (9, 3)  # exact item targets reachable
    patient = lambda case: case.split("_")[0]  # noqa: E731
    assert not _groups_of(train, patient) & _groups_of(val, patient)
    assert "7 groups" in caplog.text and "items (target 3)" in caplog.text
    # by source frame: the regex without a capture group takes the whole match
    frame_parts = split_datalist(items, (0.5, 0.5), seed=0, group_regex=r"^\d+_\d+")
    frame = lambda case: case.split("(")[0]  # noqa: E731
    assert not _groups_of(frame_parts[0], frame) & _groups_of(frame_parts[1], frame)
    # parts keep the input order and copy the items
    assert [d["case"] for d in train] == [c for c in _DDTI_CASES if c in {d["case"] for d in train}]
    assert train[0] is not items[_DDTI_CASES.index(train[0]["case"])]
    # deterministic, and the seed matters
    assert split_datalist(items, (0.75, 0.25), seed=3, group_regex=r"^(\d+)_") == (train, val)
    picks = {
        tuple(d["case"] for d in split_datalist(items, (0.75, 0.25), s, group_regex=r"^(\d+)_")[1]) for s in range(8)
    }
    assert len(picks) > 2


def test_group_fn_and_errors() -> None:
    items = [{"case": f"c{i}", "patient": i // 3} for i in range(9)]
    parts = split_datalist(items, (0.34, 0.33, 0.33), seed=0, group_fn=lambda d: d["patient"])
    assert sorted(len(p) for p in parts) == [3, 3, 3]
    assert [len({d["patient"] for d in p}) for p in parts] == [1, 1, 1]
    with pytest.raises(ValueError, match="3 group"):  # 3 groups cannot fill 4 parts
        split_datalist(items, (0.25, 0.25, 0.25, 0.25), group_fn=lambda d: d["patient"])
    with pytest.raises(ValueError, match="not both"):
        split_datalist(items, group_fn=lambda d: 0, group_regex="x")
    with pytest.raises(ValueError, match=r"Case 'c1' \(item 1\) does not match group_regex '\^c0'"):
        split_datalist(items, group_regex="^c0")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        split_datalist(items, group_regex="(")
    with pytest.raises(ValueError, match="item 0 has case=None"):
        split_datalist([{"image": "a.png"}], group_regex=".")
    with pytest.raises(TypeError, match="unhashable list"):
        split_datalist(items, group_fn=lambda d: [d["patient"]])
    with pytest.raises(ValueError, match="sum to 1"):
        split_datalist(items, (0.5, 0.2), group_fn=lambda d: d["patient"])
    # a zero fraction stays empty, every non-zero part gets a group even when that is far from its target
    parts = split_datalist(items, (0.9, 0.0, 0.1), seed=0, group_fn=lambda d: d["patient"])
    assert [len(p) for p in parts] == [6, 0, 3]


def _best_error(sizes: list[int], targets: np.ndarray, nonzero: np.ndarray) -> int:
    """Smallest sum of |part size - target| over all group assignments (brute force), non-zero parts non-empty."""
    best = None
    for assign in itertools.product(range(targets.size), repeat=len(sizes)):
        counts = np.bincount(assign, minlength=targets.size)
        if np.any((counts > 0) != nonzero):
            continue
        error = int(np.abs(np.bincount(assign, weights=sizes, minlength=targets.size) - targets).sum())
        best = error if best is None else min(best, error)
    assert best is not None
    return best


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=3, max_size=7),
    weights=st.lists(st.integers(0, 10), min_size=2, max_size=3).filter(lambda w: sum(w) > 0),
    seed=st.integers(0, 2**16),
)
def test_grouped_split_property(sizes: list[int], weights: list[int], seed: int) -> None:
    """No group on two sides, every item once, non-zero parts non-empty, and part sizes as close to the targets as
    any assignment of whole groups can be (checked against brute force)."""
    fractions = np.array(weights, dtype=float) / sum(weights)
    fractions[-1] = 1.0 - fractions[:-1].sum()
    nonzero = fractions > 0
    if len(sizes) < nonzero.sum():
        return
    items = [{"case": f"{g}_{k}"} for g, size in enumerate(sizes) for k in range(size)]
    parts = split_datalist(items, tuple(fractions), seed=seed, group_regex=r"^(\d+)_")
    owner = {}
    for k, part in enumerate(parts):
        for d in part:
            assert owner.setdefault(d["case"].split("_")[0], k) == k  # a group in one part only
    assert sorted(d["case"] for p in parts for d in p) == sorted(d["case"] for d in items)
    assert [len(p) > 0 for p in parts] == nonzero.tolist()
    targets = _target_counts(fractions, len(items))
    error = int(sum(abs(len(p) - t) for p, t in zip(parts, targets)))
    assert error == _best_error(sizes, targets, nonzero)
