# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Seeded train/val/test splits of data lists, optionally group-aware (whole patients or source frames per part).

Several images of one patient, or several crops of one ultrasound frame, are near duplicates: when they land on both
sides of a split the held-out score measures memorisation. :func:`split_datalist` keeps every group (defined by a
``group_fn`` or a regular expression on each item's ``"case"``) inside one part.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.data import partition_dataset

__all__ = ["split_datalist"]

logger = logging.getLogger(__name__)

# group permutations tried (from the seeded generator, in order) until the part sizes meet their targets exactly
_ATTEMPTS = 32


def _check_fractions(fractions: Sequence[float], n: int, what: str) -> np.ndarray:
    """Part sizes (ints summing to ``n``, at least 1 per non-zero fraction) for ``n`` items or groups ``what``."""
    fracs = np.asarray(list(fractions), dtype=float)
    if fracs.ndim != 1 or fracs.size == 0 or np.any(fracs < 0) or not np.isclose(fracs.sum(), 1.0, atol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}.")
    nonzero = np.flatnonzero(fracs > 0)
    if n < nonzero.size:
        raise ValueError(
            f"Cannot split a data list of {n} {what} into {nonzero.size} non-empty parts {tuple(fractions)}."
        )
    return fracs


def _target_counts(fracs: np.ndarray, n: int) -> np.ndarray:
    """``fracs * n`` rounded by largest remainder (ties by part order) so they sum to ``n``; every non-zero fraction
    gets at least 1 (taken from the largest part)."""
    exact = fracs * n
    counts = np.floor(exact).astype(int)
    for idx in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[idx] += 1
    # Guarantee a non-empty part for every non-zero fraction (e.g. a 10% holdout of 5 cases).
    for idx in np.flatnonzero(fracs > 0):
        if counts[idx] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[idx] = 1
    return counts


def _item_groups(
    datalist: Sequence[Mapping[str, Any]],
    group_fn: Callable[[Mapping[str, Any]], Hashable] | None,
    group_regex: str | None,
) -> list[Hashable]:
    """The group of every item, by ``group_fn(item)`` or by ``re.search(group_regex, item["case"])`` (first capture
    group, else the whole match)."""
    if group_fn is not None and group_regex is not None:
        raise ValueError("Pass group_fn or group_regex, not both.")
    if group_regex is not None:
        try:
            pattern = re.compile(group_regex)
        except re.error as err:
            raise ValueError(f"group_regex '{group_regex}' is not a valid regular expression: {err}.") from err
        groups: list[Hashable] = []
        for index, item in enumerate(datalist):
            case = item.get("case") if isinstance(item, Mapping) else None
            if not isinstance(case, str):
                raise ValueError(
                    f"group_regex needs a string 'case' in every item; item {index} has case={case!r}. "
                    "Add 'case' ids to the data list or pass group_fn instead."
                )
            match = pattern.search(case)
            if match is None:
                raise ValueError(
                    f"Case '{case}' (item {index}) does not match group_regex '{group_regex}'; use a regex that "
                    "matches every case id (its first capture group names the group), or group_regex=None for an "
                    "ungrouped split."
                )
            groups.append(match.group(1) if pattern.groups else match.group(0))
        return groups
    assert group_fn is not None
    groups = []
    for index, item in enumerate(datalist):
        group = group_fn(item)
        try:
            hash(group)
        except TypeError as err:
            raise TypeError(
                f"group_fn returned an unhashable {type(group).__name__} ({group!r}) for item {index}; "
                "return a hashable group id (str, int, tuple)."
            ) from err
        groups.append(group)
    return groups


def _balance(assign: np.ndarray, sizes: np.ndarray, targets: np.ndarray, keep_nonempty: np.ndarray) -> np.ndarray:
    """Move or swap whole groups between parts while that lowers ``sum(|part size - target|)`` (items).

    ``assign[g]`` is the part of group ``g`` (groups in their shuffled order); the first group of a size in that order
    is the one moved, so the choice stays random. Parts with a zero target receive nothing; a part in
    ``keep_nonempty`` keeps at least one group.
    """
    assign = assign.copy()
    num_parts = targets.size
    while True:
        totals = np.bincount(assign, weights=sizes, minlength=num_parts).astype(int)
        counts = np.bincount(assign, minlength=num_parts)
        error = np.abs(totals - targets)
        best: tuple[int, int, int | None] | None = None  # (gain, group a, group b or None)
        best_gain = 0
        for src in range(num_parts):
            for dst in range(num_parts):
                if src == dst or targets[dst] == 0:
                    continue
                base = error[src] + error[dst]
                src_groups = np.flatnonzero(assign == src)
                dst_groups = np.flatnonzero(assign == dst)
                # first group of each size in shuffled order
                src_sizes, src_first = np.unique(sizes[src_groups], return_index=True)
                if not (keep_nonempty[src] and counts[src] <= 1):
                    for s, i in zip(src_sizes, src_first):
                        gain = base - abs(totals[src] - s - targets[src]) - abs(totals[dst] + s - targets[dst])
                        if gain > best_gain:
                            best_gain, best = gain, (int(src_groups[i]), -1, dst)
                if src > dst:  # each unordered pair once for swaps
                    continue
                dst_sizes, dst_first = np.unique(sizes[dst_groups], return_index=True)
                for s, i in zip(src_sizes, src_first):
                    for u, j in zip(dst_sizes, dst_first):
                        if s == u:
                            continue
                        gain = base - abs(totals[src] - s + u - targets[src]) - abs(totals[dst] + s - u - targets[dst])
                        if gain > best_gain:
                            best_gain, best = gain, (int(src_groups[i]), int(dst_groups[j]), dst)
        if best is None:
            return assign
        a, b, dst = best
        if b >= 0:
            assign[b] = assign[a]
        assign[a] = dst


def _assign_groups(sizes: np.ndarray, targets: np.ndarray, nonzero: np.ndarray) -> np.ndarray:
    """Part of each group (``sizes`` in shuffled order): consecutive runs, one per non-zero part, each cut at the group
    boundary whose cumulative item count is closest to the cumulative target (leaving at least one group for every
    part), then improved by :func:`_balance`."""
    num_groups = sizes.size
    cumulative = np.concatenate([[0], np.cumsum(sizes)])
    parts = np.flatnonzero(nonzero)
    cuts = [0]
    for j in range(1, parts.size):
        candidates = np.arange(cuts[-1] + 1, num_groups - (parts.size - j) + 1)
        wanted = targets[parts[:j]].sum()
        cuts.append(int(candidates[np.argmin(np.abs(cumulative[candidates] - wanted))]))
    cuts.append(num_groups)
    assign = np.zeros(num_groups, dtype=int)
    for j, part in enumerate(parts):
        assign[cuts[j] : cuts[j + 1]] = part
    return _balance(assign, sizes, targets, nonzero)


def split_datalist(
    datalist: Sequence[Mapping[str, Any]],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_fn: Callable[[Mapping[str, Any]], Hashable] | None = None,
    group_regex: str | None = None,
) -> tuple[list[dict[str, Any]], ...]:
    """Split a data list into disjoint, seeded random parts (e.g. train/val/test), optionally keeping groups whole.

    Without groups, part sizes are ``fraction * len(datalist)`` rounded by largest remainder (they add up to
    ``len(datalist)``), every part with a non-zero fraction gets at least one item, and the items are drawn by one
    seeded permutation: the same seed gives the same split as every earlier version of this function.

    With ``group_fn`` or ``group_regex`` all items of a group go to the same part (no patient or source frame on both
    sides). The groups (in order of first appearance) are shuffled by the same seeded permutation and cut into
    consecutive runs whose item counts are closest to the targets above, then whole groups are moved or swapped between
    parts while that brings the part sizes (counted in items) closer to the targets; while the sizes still miss the
    targets, further permutations from the same generator are tried (32 in all) and the closest split is kept. Each
    part with a non-zero fraction gets at least one group; with one item per group the split equals the ungrouped one.
    The groups and items per part are logged at INFO level.

    Example, DDTI crops ``<patient>_<frame>(<k>)`` grouped by patient, and by source frame::

        train, val = split_datalist(items, (0.9, 0.1), seed=0, group_regex=r"^(\\d+)_")
        train, val = split_datalist(items, (0.9, 0.1), seed=0, group_regex=r"^(.+?)(?:\\(\\d+\\))?$")
        train, val = split_datalist(items, (0.9, 0.1), group_fn=lambda item: item["patient"])

    Args:
        datalist: items to split (mappings, e.g. from :func:`image_folder_datalist`).
        fractions: non-negative fractions, one per output part, summing to 1.
        seed: seed of the random permutation (of items, or of groups).
        group_fn: ``group_fn(item) -> hashable group id``.
        group_regex: regular expression applied with :func:`re.search` to each item's ``"case"``; the group is its first
            capture group when it has one, else the whole match.

    Returns:
        One list per fraction; items are shallow copies of the input dicts and each part keeps the input order.

    Raises:
        ValueError: bad ``fractions``; fewer items (or groups) than non-zero fractions; both ``group_fn`` and
            ``group_regex``; a case that ``group_regex`` does not match (naming the case and the regex).
        TypeError: ``group_fn`` returned an unhashable value.
    """
    n = len(datalist)
    if group_fn is None and group_regex is None:
        fracs = _check_fractions(fractions, n, "item(s)")
        counts = _target_counts(fracs, n)
        # MONAI's partition_dataset(shuffle=True) draws another permutation (RandomState) and rounds each part on its
        # own, so it can leave items out or a holdout empty: our permutation and counts keep the published splits, and
        # counts that sum to n make its ratios exact.
        order = np.random.default_rng(seed).permutation(n).tolist()
        parts = partition_dataset(order, ratios=counts.tolist())
        return tuple([dict(datalist[i]) for i in sorted(part)] for part in parts)

    item_groups = _item_groups(datalist, group_fn, group_regex)
    index_of: dict[Hashable, int] = {}
    members: list[list[int]] = []
    for i, group in enumerate(item_groups):
        if group not in index_of:
            index_of[group] = len(members)
            members.append([])
        members[index_of[group]].append(i)
    num_groups = len(members)
    fracs = _check_fractions(fractions, num_groups, "group(s)")
    targets = _target_counts(fracs, n)
    nonzero = fracs > 0

    group_sizes = np.array([len(m) for m in members], dtype=int)
    rng = np.random.default_rng(seed)
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    for _ in range(_ATTEMPTS):  # the first permutation is the ungrouped split's; more only while sizes miss targets
        order = rng.permutation(num_groups)
        assign = _assign_groups(group_sizes[order], targets, nonzero)
        totals = np.bincount(assign, weights=group_sizes[order], minlength=targets.size)
        error = int(np.abs(totals - targets).sum())
        if best is None or error < best[0]:
            best = (error, order, assign)
        if error == 0:
            break
    assert best is not None
    _, order, assign = best
    part_items: list[list[int]] = [[] for _ in range(targets.size)]
    for position, group in enumerate(order):
        part_items[assign[position]].extend(members[group])
    result = tuple([dict(datalist[i]) for i in sorted(items)] for items in part_items)
    logger.info(
        "Grouped split (seed %d) of %d items in %d groups: %s.",
        seed,
        n,
        num_groups,
        "; ".join(
            f"part {k}: {int(np.sum(assign == k))} groups, {len(part_items[k])} items (target {targets[k]})"
            for k in range(targets.size)
        ),
    )
    return result
