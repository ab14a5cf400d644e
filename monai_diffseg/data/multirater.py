# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data-list builders for multi-rater segmentation: one image with ``R`` rater masks (QUBIQ, LIDC-IDRI lesion crops).

Items are ``{"image": abs_path, "raters": [abs_path, ...], "case": id}`` (LIDC items also carry ``"patient"``), ready
for :class:`monai_diffseg.transforms.LoadRatersd`. Two layouts are read:

- **case folders** (:func:`case_folder_datalist`): one folder per case with ``image.<ext>`` and the rater masks, named
  ``rater<k>``, ``label<k>``, ``annotator<k>``, ``seg<k>``, ``mask<k>`` (optionally ``_``/``-`` before ``k``) or, as the
  QUBIQ challenge releases them, ``task<TT>_seg<KK>`` (QUBIQ 2020/2021:
  ``training_data_v3/brain-growth/Training/case01/{image, task01_seg01 ... task01_seg07}.nii.gz``; the shared
  re-distribution ``qubiq_brain_growth/case01/{image, rater1 ... rater7}.png``);
- **LIDC-IDRI lesion crops** (:func:`lidc_crops_datalist`) as released for the (Hierarchical) Probabilistic U-Net
  (Kohl et al. 2018/2019; ``gs://hpunet-data/lidc_crops``, 180x180 PNG crops, 4 graders):
  ``<split>/images/<patient>/<slice>.png`` with ``<split>/gt/<patient>/<slice>_l<k>.png``, ``k = 0..3``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Literal

from monai.config import PathLike
from monai.utils import look_up_option

from monai_diffseg.data.splits import split_datalist
from monai_diffseg.data.utils import check_dir, check_labels_option, format_names

__all__ = [
    "LIDC_CROPS_SPLITS",
    "MULTIRATER_LAYOUTS",
    "case_folder_datalist",
    "lidc_crops_datalist",
    "multirater_datalist",
    "multirater_train_val_datalists",
]

logger = logging.getLogger(__name__)

#: Layouts understood by :func:`multirater_datalist` (``"auto"`` detects them).
MULTIRATER_LAYOUTS: tuple[str, ...] = ("auto", "case_folders", "lidc_crops")
#: Splits of the released LIDC-IDRI crops (split by patient by the releasers).
LIDC_CROPS_SPLITS: tuple[str, ...] = ("train", "val", "test")

_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_EXT_RE = "|".join(re.escape(e[1:]) for e in _EXTS)
_IMAGE_RE = re.compile(rf"^image\.({_EXT_RE})$", re.IGNORECASE)
_RATER_RE = re.compile(rf"^(?:rater|label|annotator|seg|mask)[_-]?(\d+)\.({_EXT_RE})$", re.IGNORECASE)
_QUBIQ_RE = re.compile(rf"^task(\d+)_seg(\d+)\.({_EXT_RE})$", re.IGNORECASE)
_LIDC_GT_RE = re.compile(rf"^(.+)_l(\d+)\.({_EXT_RE})$", re.IGNORECASE)


def _files(folder: str) -> list[str]:
    """Visible plain files of ``folder``, sorted."""
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def _rater_files(case_dir: str, names: Sequence[str], task: int | None) -> list[str]:
    """The rater masks of one case folder, ordered by rater number; ``ValueError`` for ambiguous names."""
    generic = {int(m.group(1)): n for n in names if (m := _RATER_RE.match(n))}
    qubiq: dict[int, dict[int, str]] = {}
    for n in names:
        if m := _QUBIQ_RE.match(n):
            qubiq.setdefault(int(m.group(1)), {})[int(m.group(2))] = n
    if generic and qubiq:
        raise ValueError(
            f"Case folder '{case_dir}' mixes rater<k> and QUBIQ task<TT>_seg<KK> mask names; keep one naming."
        )
    if qubiq:
        if task is None:
            if len(qubiq) > 1:
                raise ValueError(
                    f"Case folder '{case_dir}' holds QUBIQ masks of several tasks {sorted(qubiq)}; choose one with "
                    "task=<number> (e.g. task=1 for task01_seg*)."
                )
            task = next(iter(qubiq))
        if task not in qubiq:
            raise ValueError(f"Case folder '{case_dir}' has no task{task:02d}_seg* masks (tasks: {sorted(qubiq)}).")
        generic = qubiq[task]
    counts: dict[int, int] = {}
    for n in names:  # the same rater number with two extensions (rater1.png and rater1.jpg) is ambiguous
        m = _RATER_RE.match(n) or _QUBIQ_RE.match(n)
        if m and (not qubiq or int(m.group(1)) == task):
            k = int(m.group(m.lastindex - 1))
            counts[k] = counts.get(k, 0) + 1
    dup = sorted(k for k, c in counts.items() if c > 1)
    if dup:
        raise ValueError(f"Case folder '{case_dir}' has several files for rater(s) {dup}; keep exactly one each.")
    return [os.path.join(case_dir, generic[k]) for k in sorted(generic)]


def _check_counts(items: list[dict], num_raters: int | None, where: str) -> list[dict]:
    """``ValueError`` unless every item has ``num_raters`` raters (default: as many as the first item)."""
    if not items:
        return items
    expected = num_raters if num_raters is not None else len(items[0]["raters"])
    bad = [d for d in items if len(d["raters"]) != expected]
    if bad:
        source = f"num_raters={num_raters}" if num_raters is not None else f"case '{items[0]['case']}'"
        raise ValueError(
            f"Every case must have the same number of rater masks: {source} gives {expected} but case "
            f"'{bad[0]['case']}' in '{where}' has {len(bad[0]['raters'])} "
            f"({', '.join(os.path.basename(p) for p in bad[0]['raters']) or 'none'}); "
            f"{len(bad)} case(s) differ. Complete or remove them, or set num_raters."
        )
    return items


def case_folder_datalist(
    dataset_dir: PathLike,
    task: int | None = None,
    num_raters: int | None = None,
    labels: bool | Literal["auto"] = "auto",
) -> list[dict]:
    """Data list of a folder of case folders, each with ``image.<ext>`` and its rater masks (module docstring).

    Sub-folders without an image and without masks (e.g. ``__MACOSX``) are ignored; hidden files too.

    Args:
        dataset_dir: folder holding the case folders (e.g. ``qubiq_brain_growth`` or QUBIQ's
            ``brain-growth/Training``).
        task: QUBIQ task number when the case folders hold ``task<TT>_seg<KK>`` masks of several tasks (e.g. the
            prostate or brain-tumor sets); default: the only task present.
        num_raters: required number of raters per case; default: as many as the first case, the same for all.
        labels: ``True`` requires masks in every case, ``False`` lists images only (no ``"raters"`` key),
            ``"auto"`` uses masks when the first case has some.

    Returns:
        Items ``{"image": abs_path, "raters": [abs_path, ...], "case": folder name}`` sorted by case; raters ordered by
        their number (``rater1`` ... ``rater7``; ``task01_seg01`` ...).

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        ValueError: no case folder, a case with masks but no ``image.<ext>`` (or several), a case with another
            number of raters, several QUBIQ tasks without ``task``.
    """
    check_labels_option(labels)
    root = check_dir(dataset_dir, "Multi-rater dataset_dir")
    items: list[dict] = []
    for case in sorted(os.listdir(root)):
        case_dir = os.path.join(root, case)
        if case.startswith(".") or not os.path.isdir(case_dir):
            continue
        names = _files(case_dir)
        images = [n for n in names if _IMAGE_RE.match(n)]
        raters = _rater_files(case_dir, names, task)
        if not images and not raters:
            continue
        if len(images) != 1:
            what = "no image" if not images else f"several images ({', '.join(images)})"
            raise ValueError(
                f"Case folder '{case_dir}' has {what}; expected exactly one 'image.<ext>' "
                f"({', '.join(e[1:] for e in _EXTS)}) next to its rater masks."
            )
        item = {"image": os.path.join(case_dir, images[0]), "raters": raters, "case": case}
        items.append(item)
    if not items:
        sub = [n for n in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, n))]
        raise ValueError(
            f"No case folders with an 'image.<ext>' found in '{root}' (sub-folders: {format_names(sub) if sub else 'none'}"
            "); expected <dataset_dir>/<case>/image.png with rater1.png ... (or QUBIQ's <case>/image.nii.gz with "
            "task01_seg01.nii.gz ...)."
        )
    use = bool(items[0]["raters"]) if labels == "auto" else labels
    if not use:
        return [{"image": d["image"], "case": d["case"]} for d in items]
    missing = [d["case"] for d in items if not d["raters"]]
    if missing:
        raise ValueError(
            f"Case folder(s) {format_names(missing)} in '{root}' have no rater masks (rater<k>.<ext> or "
            "task<TT>_seg<KK>.<ext>); pass labels=False to list images only."
        )
    return _check_counts(items, num_raters, root)


def lidc_crops_datalist(
    dataset_dir: PathLike,
    split: str | None = "train",
    num_raters: int = 4,
    labels: bool | Literal["auto"] = "auto",
) -> list[dict]:
    """Data list of the LIDC-IDRI lesion crops released with the Hierarchical Probabilistic U-Net (module docstring).

    Expected layout (``split=None``: ``images/`` and ``gt/`` directly under ``dataset_dir``)::

        <dataset_dir>/<split>/images/<patient>/<slice>.png
        <dataset_dir>/<split>/gt/<patient>/<slice>_l0.png ... <slice>_l<num_raters - 1>.png

    e.g. ``train/images/LIDC-IDRI-0001/z-105.0_c0.png`` with ``train/gt/LIDC-IDRI-0001/z-105.0_c0_l0.png`` ...
    (the masks of graders who did not mark the lesion are empty).

    Args:
        dataset_dir: the ``lidc_crops`` folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (no split folder).
        num_raters: graders per crop (4 in LIDC).
        labels: ``True`` requires the masks, ``False`` lists images only, ``"auto"`` uses ``gt/`` when it exists.

    Returns:
        Items ``{"image", "raters": [l0, ..., l<R-1>], "case": "<patient>_<slice>", "patient": "<patient>"}``
        sorted by patient and slice.

    Raises:
        FileNotFoundError: missing ``images/`` (or ``gt/`` with ``labels=True``) folder.
        ValueError: bad ``split``, no image, a crop without all ``num_raters`` masks.
    """
    check_labels_option(labels)
    root = check_dir(dataset_dir, "LIDC crops dataset_dir")
    base = root if split is None else os.path.join(root, look_up_option(split, LIDC_CROPS_SPLITS))
    image_root = check_dir(os.path.join(base, "images"), f"LIDC crops images folder (split {split!r})")
    gt_root = os.path.join(base, "gt")
    use = os.path.isdir(gt_root) if labels == "auto" else labels
    if use:
        gt_root = check_dir(gt_root, f"LIDC crops gt folder (split {split!r}); pass labels=False to list images only")
    items: list[dict] = []
    missing: list[str] = []
    for patient in sorted(os.listdir(image_root)):
        pdir = os.path.join(image_root, patient)
        if patient.startswith(".") or not os.path.isdir(pdir):
            continue
        gt_names: dict[str, dict[int, str]] = {}
        if use and os.path.isdir(os.path.join(gt_root, patient)):
            for n in _files(os.path.join(gt_root, patient)):
                if m := _LIDC_GT_RE.match(n):
                    gt_names.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(gt_root, patient, n)
        for name in _files(pdir):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in _EXTS:
                continue
            item: dict = {"image": os.path.join(pdir, name), "case": f"{patient}_{stem}", "patient": patient}
            if use:
                found = gt_names.get(stem, {})
                if sorted(found) != list(range(num_raters)):
                    missing.append(f"{patient}/{stem} (has l{sorted(found)})")
                    continue
                item["raters"] = [found[k] for k in range(num_raters)]
            items.append(item)
    if missing:
        raise ValueError(
            f"LIDC crop(s) {format_names(missing)} lack rater masks in '{gt_root}': expected "
            f"<patient>/<slice>_l0 ... _l{num_raters - 1} (num_raters={num_raters}). Complete or remove them."
        )
    if not items:
        raise ValueError(f"No crops (<patient>/<slice>.png) found in '{image_root}'.")
    return items


def _detect_layout(root: str) -> str:
    """``"lidc_crops"`` when ``root`` holds ``images/`` or a LIDC split folder with ``images/``, else ``"case_folders"``."""
    if any(os.path.isdir(os.path.join(root, *p)) for p in (["images"], *([s, "images"] for s in LIDC_CROPS_SPLITS))):
        return "lidc_crops"
    return "case_folders"


def multirater_datalist(
    dataset_dir: PathLike,
    split: str | None = "test",
    layout: str = "auto",
    task: int | None = None,
    num_raters: int | None = None,
    labels: bool | Literal["auto"] = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[dict]:
    """Data list of a multi-rater dataset in either layout (for inference and evaluation).

    Args:
        dataset_dir: a folder of case folders, or the LIDC ``lidc_crops`` folder.
        split: LIDC split (``"train"``, ``"val"``, ``"test"``; used when that folder exists, else the crops directly
            under ``dataset_dir``). Case folders: ``"train"`` / ``"val"`` are the two parts of the seeded holdout of
            :func:`multirater_train_val_datalists` (same ``val_fraction`` and ``seed`` as training), ``"test"`` or
            ``None`` every case (a separate test folder, e.g. QUBIQ's ``Validation``).
        layout: ``"auto"`` (LIDC when ``images/`` or ``<split>/images/`` exists), ``"case_folders"``, ``"lidc_crops"``.
        task: QUBIQ task number, see :func:`case_folder_datalist`.
        num_raters: raters per case (default: LIDC 4, case folders as many as the first case).
        labels: see :func:`case_folder_datalist`.
        val_fraction, seed: the holdout of case folders for ``split="train"`` / ``"val"``.

    Returns:
        Items as :func:`case_folder_datalist` / :func:`lidc_crops_datalist`.
    """
    root = check_dir(dataset_dir, "Multi-rater dataset_dir")
    layout = look_up_option(layout, MULTIRATER_LAYOUTS)
    if layout == "auto":
        layout = _detect_layout(root)
    if layout == "lidc_crops":
        lidc_split = split if split is not None and os.path.isdir(os.path.join(root, split)) else None
        return lidc_crops_datalist(root, lidc_split, num_raters=num_raters or 4, labels=labels)
    if split in ("train", "val"):
        parts = multirater_train_val_datalists(root, val_fraction, seed, "case_folders", task, num_raters)
        return parts[split == "val"]
    return case_folder_datalist(root, task=task, num_raters=num_raters, labels=labels)


def multirater_train_val_datalists(
    dataset_dir: PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    layout: str = "auto",
    task: int | None = None,
    num_raters: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """Training and validation data lists of a multi-rater dataset (rater masks required).

    LIDC crops use the released ``train`` and ``val`` splits (by patient); case folders (QUBIQ) a seeded holdout
    (:func:`~monai_diffseg.data.split_datalist`) of ``val_fraction`` of the cases (at least one).

    Args:
        dataset_dir: a folder of case folders, or the LIDC ``lidc_crops`` folder.
        val_fraction: holdout fraction in (0, 1) for case folders.
        seed: seed of the holdout.
        layout, task, num_raters: see :func:`multirater_datalist`.

    Returns:
        ``(train_list, val_list)``, disjoint, each sorted by case.
    """
    root = check_dir(dataset_dir, "Multi-rater dataset_dir")
    layout = look_up_option(layout, MULTIRATER_LAYOUTS)
    if layout == "auto":
        layout = _detect_layout(root)
    if layout == "lidc_crops":
        r = num_raters or 4
        train, val = (lidc_crops_datalist(root, s, num_raters=r, labels=True) for s in ("train", "val"))
        logger.info("LIDC crops: released split, %d training and %d validation crops.", len(train), len(val))
        return train, val
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    items = case_folder_datalist(root, task=task, num_raters=num_raters, labels=True)
    if len(items) < 2:
        raise ValueError(f"Cannot hold out validation cases from {len(items)} case(s) in '{root}'.")
    train, val = split_datalist(items, (1.0 - float(val_fraction), float(val_fraction)), seed=seed)
    logger.info(
        "Multi-rater case folders '%s': seeded holdout (fraction=%g, seed=%d): %d training, %d validation cases.",
        root,
        val_fraction,
        seed,
        len(train),
        len(val),
    )
    return train, val
