# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data-list builders for brain-tumour MRI in the official BraTS per-case layouts.

BraTS 2018-2021 (Menze et al. 2015, Bakas et al. 2017/2018; https://www.med.upenn.edu/sbia/brats2018/data.html,
https://www.synapse.org/brats2021): one folder per case, ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; the 2018
training release nests the case folders in ``HGG/`` and ``LGG/``. Labels: 0 background, 1 necrotic / non-enhancing
tumour core, 2 peritumoral oedema, 4 GD-enhancing tumour.

BraTS 2023 (adult glioma, https://www.synapse.org/brats2023): ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (e.g.
``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz``); the enhancing tumour is label 3.

Both give volumes of 240x240x155 at 1 mm, skull-stripped and co-registered. The builders return MONAI data lists
``[{"image": [t1, t1ce, t2, flair], "label": seg, "case": id}, ...]`` (the four modalities in that order for both
layouts, no ``"label"`` for unlabelled lists) ready for ``LoadImaged(keys=["image", "label"])``: a list of files under
``"image"`` is stacked into one 4-channel image.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Literal

from monai.config import PathLike
from monai.data.folder_layout import default_name_formatter
from monai.utils import look_up_option

from monai_diffseg.data.splits import split_datalist
from monai_diffseg.data.utils import check_dir, check_labels_option, format_names, subfolders

__all__ = [
    "BRATS_ET_LABEL",
    "BRATS_FORMATS",
    "BRATS_MODALITIES",
    "BRATS_SPLITS",
    "brats_datalist",
    "brats_output_name",
    "detect_brats_format",
]

logger = logging.getLogger(__name__)

BRATS_FORMATS: tuple[str, ...] = ("auto", "brats2018", "brats2023")
"""``dataset_format`` options: detect from the files, BraTS 2018-2021 layout (``_t1ce``), BraTS 2023 (``-t1c``)."""

BRATS_MODALITIES: dict[str, tuple[str, ...]] = {
    "brats2018": ("t1", "t1ce", "t2", "flair"),
    "brats2023": ("t1n", "t1c", "t2w", "t2f"),
}
"""File suffixes of the four modalities per layout, in the channel order of the data lists (T1, T1-Gd, T2, FLAIR)."""

BRATS_ET_LABEL: dict[str, int] = {"brats2018": 4, "brats2023": 3}
"""Label value of the enhancing tumour per layout (the ``et_label`` of MONAI's BraTS conversion)."""

BRATS_SPLITS: tuple[str, ...] = ("all", "train", "val", "test")
"""``split`` options of :func:`brats_datalist`."""

_SEPARATOR = {"brats2018": "_", "brats2023": "-"}
_EXTS = (".nii.gz", ".nii")  # BraTS 2020 ships one seg as .nii
_SEARCH_DEPTH = 3  # dataset_dir, e.g. MICCAI_BraTS_2018_Data_Training/HGG/<case>
_SUFFIX_RE = re.compile(r"^(?P<case>.+?)[_-](?:t1ce|t1c|t1n|t1|t2w|t2f|t2|flair|seg)(?:\.nii\.gz|\.nii)?$")


def _case_file(folder: str, case: str, sep: str, suffix: str) -> str | None:
    for ext in _EXTS:
        path = os.path.join(folder, f"{case}{sep}{suffix}{ext}")
        if os.path.isfile(path):
            return path
    return None


def _case_format(folder: str) -> str | None:
    """The layout of case folder ``folder`` (its files are named after it), or ``None`` when it is no case folder."""
    case = os.path.basename(folder)
    for fmt in ("brats2023", "brats2018"):
        sep = _SEPARATOR[fmt]
        if any(_case_file(folder, case, sep, s) for s in (*BRATS_MODALITIES[fmt], "seg")):
            return fmt
    return None


def _case_folders(root: str) -> list[str]:
    """Case folders (named like the files they hold) at ``root`` (a single case) or below, breadth first up to
    :data:`_SEARCH_DEPTH` levels, sorted by case id; hidden folders and ``__MACOSX`` are skipped."""
    found: list[str] = []
    level = [root]
    for _ in range(_SEARCH_DEPTH + 1):
        nxt: list[str] = []
        for folder in level:
            if _case_format(folder) is not None:
                found.append(folder)
                continue
            nxt.extend(subfolders(folder))
        level = nxt
    return sorted(found, key=os.path.basename)


def _contents(folder: str) -> str:
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"'{folder}' contains: {shown or 'nothing'}"


def _expected(fmt: str) -> str:
    sep, mods = _SEPARATOR[fmt], BRATS_MODALITIES[fmt]
    return f"<case>/<case>{sep}{{{','.join(mods)},seg}}.nii.gz"


def detect_brats_format(dataset_dir: PathLike) -> str:
    """Detect the layout of the case folders in ``dataset_dir``: ``"brats2018"`` (2018-2021: ``<case>_t1ce.nii.gz``)
    or ``"brats2023"`` (``<case>-t1c.nii.gz``).

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or holds no case folder of either layout (up to three levels
            down; the message shows both layouts and the folder's contents).
        ValueError: case folders of both layouts (naming one of each).
    """
    root = check_dir(dataset_dir, "BraTS dataset_dir")
    folders = _case_folders(root)
    if not folders:
        raise FileNotFoundError(
            f"No BraTS case folders found in '{root}' or {_SEARCH_DEPTH} levels below: expected "
            f"{_expected('brats2018')} (BraTS 2018-2021) or {_expected('brats2023')} (BraTS 2023); {_contents(root)}."
        )
    by_format: dict[str, list[str]] = {}
    for folder in folders:
        by_format.setdefault(str(_case_format(folder)), []).append(os.path.basename(folder))
    if len(by_format) > 1:
        raise ValueError(
            f"'{root}' mixes BraTS layouts: e.g. case '{by_format['brats2018'][0]}' is named like BraTS 2018-2021 "
            f"({_expected('brats2018')}) and '{by_format['brats2023'][0]}' like BraTS 2023 ({_expected('brats2023')}); "
            "point dataset_dir at one release."
        )
    return next(iter(by_format))


def _scan(root: str, fmt: str, labels: bool | str) -> list[dict[str, Any]]:
    """One item per case folder of layout ``fmt``; ``ValueError`` naming the cases that miss a modality or a seg."""
    sep, mods = _SEPARATOR[fmt], BRATS_MODALITIES[fmt]
    all_folders = _case_folders(root)
    folders = [f for f in all_folders if _case_format(f) == fmt]
    if not folders:
        other = "brats2023" if fmt == "brats2018" else "brats2018"
        hint = (
            f"it holds {len(all_folders)} {other} case folder(s) ({_expected(other)}): set dataset_format='{other}' "
            "or 'auto'"
            if all_folders
            else f"{_contents(root)}; check dataset_dir"
        )
        raise FileNotFoundError(
            f"No {fmt} case folders ({_expected(fmt)}) found in '{root}' or {_SEARCH_DEPTH} levels below; {hint}."
        )
    items, missing = [], []
    for folder in folders:
        case = os.path.basename(folder)
        files = {m: _case_file(folder, case, sep, m) for m in (*mods, "seg")}
        lacking = [f"{case}{sep}{m}.nii.gz" for m in mods if files[m] is None]
        if lacking:
            missing.append(f"'{case}' lacks {', '.join(lacking)}")
        item: dict[str, Any] = {"image": [files[m] for m in mods], "case": case}
        if files["seg"] is not None:
            item["label"] = files["seg"]
        items.append(item)
    if missing:
        raise ValueError(
            f"BraTS cases in '{root}' miss modality files ({_expected(fmt)}): {'; '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} case(s)). Complete the download or remove the case "
            "folder(s)."
        )
    labelled = [i for i in items if "label" in i]
    if labels is False or (labels == "auto" and not labelled):
        return [{k: v for k, v in i.items() if k != "label"} for i in items]
    unlabelled = [i["case"] for i in items if "label" not in i]
    if unlabelled:
        raise ValueError(
            f"No segmentation ({{case}}{sep}seg.nii.gz) for BraTS case(s) {format_names(unlabelled)} in '{root}', "
            f"while {len(labelled)} other case(s) have one; e.g. expected "
            f"'{os.path.join(root, '...', unlabelled[0], unlabelled[0] + sep + 'seg.nii.gz')}'. Complete or remove "
            "those cases, or pass labels=False to list images only."
        )
    return items


def brats_datalist(
    dataset_dir: PathLike,
    dataset_format: str = "auto",
    labels: bool | Literal["auto"] = "auto",
    split: str = "all",
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Data list of a BraTS release in its official per-case layout, or one part of a seeded split of it.

    Expected layout (``dataset_dir`` holds the case folders, directly or up to three levels down, e.g. the 2018
    ``MICCAI_BraTS_2018_Data_Training/`` with ``HGG/`` and ``LGG/``, or is one case folder)::

        Brats18_2013_11_1/Brats18_2013_11_1_{t1,t1ce,t2,flair,seg}.nii.gz         BraTS 2018-2021
        BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz   BraTS 2023

    Case folders are recognised by files named after the folder; other files (e.g. ``survival_data.csv``) and folders
    are ignored. Validation releases without ``seg`` files give unlabelled lists.

    Args:
        dataset_dir: see above.
        dataset_format: ``"brats2018"`` (2018-2021), ``"brats2023"`` or ``"auto"`` (:func:`detect_brats_format`).
        labels: ``True`` requires a seg for every case; ``False`` lists images only; ``"auto"`` uses the segs when any
            case has one (then every case needs one).
        split: ``"all"`` (every case), or ``"train"`` / ``"val"`` / ``"test"``: that part of the seeded
            :func:`~monai_diffseg.data.split_datalist` of the labelled cases with fractions
            ``(1 - val_fraction - test_fraction, val_fraction, test_fraction)``; same files, fractions and ``seed``,
            same parts (pass the training run's values to score its test part).
        val_fraction, test_fraction: holdout fractions (``split != "all"`` only); a non-zero one gets >= 1 case.
        seed: seed of the split.

    Returns:
        Items ``{"image": [t1, t1ce, t2, flair] abs paths, "label": seg abs path, "case": folder name}`` sorted by
        case (BraTS 2023: ``[t1n, t1c, t2w, t2f]``).

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or holds no case folders.
        ValueError: a case missing a modality, a labelled list with a case missing its seg (both naming the cases),
            mixed layouts, bad ``labels`` / ``split`` / fractions, or fewer labelled cases than non-empty parts.
    """
    check_labels_option(labels)
    split = look_up_option(split, BRATS_SPLITS)
    dataset_format = look_up_option(dataset_format, BRATS_FORMATS)
    root = check_dir(dataset_dir, "BraTS dataset_dir")
    if dataset_format == "auto":
        dataset_format = detect_brats_format(root)
        logger.info("BraTS dataset_dir '%s': detected the %s layout.", root, dataset_format)
    if split == "all":
        return _scan(root, dataset_format, labels)
    val, test = float(val_fraction), float(test_fraction)
    if val < 0 or test < 0 or val + test >= 1.0:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 with a sum below 1."
        )
    if labels is False:
        raise ValueError(f"split='{split}' splits labelled cases; use labels=True or 'auto', or split='all'.")
    items = _scan(root, dataset_format, True)
    parts = split_datalist(items, (1.0 - val - test, val, test), seed=seed)
    part = parts[BRATS_SPLITS.index(split) - 1]
    logger.info(
        "BraTS '%s': seeded split (val_fraction=%g, test_fraction=%g, seed=%d) of %d cases: %s part = %d cases.",
        root,
        val,
        test,
        seed,
        len(items),
        split,
        len(part),
    )
    return part


def brats_output_name(metadict: dict, saver: Any) -> dict:
    """``output_name_formatter`` of MONAI's ``SaveImage`` for BraTS cases: the output is named after the case, not the
    first modality file it was read from (``Brats18_X_t1.nii.gz`` -> ``Brats18_X_<postfix>.nii.gz``); other names pass
    through as in MONAI's default formatter."""
    kwargs = default_name_formatter(metadict, saver)
    subject = str(kwargs["subject"])
    folder, name = os.path.split(subject)
    match = _SUFFIX_RE.match(name)
    if match is not None:
        kwargs["subject"] = os.path.join(folder, match.group("case") + ".nii.gz")
    return kwargs
