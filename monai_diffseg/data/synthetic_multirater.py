# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tiny synthetic multi-rater datasets in the two layouts of :mod:`monai_diffseg.data.multirater`, for tests::

    python -m monai_diffseg.data.synthetic_multirater --output_dir /tmp/mr --layout case_folders --num_cases 8

Each image is a noisy grayscale blob; each rater outlines it with their own bias (a dilated or eroded version of the
blob, shifted by a pixel or so), so the raters disagree at the boundary as real raters do. In the LIDC layout some
graders leave the mask empty (they did not mark the lesion).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.config import PathLike
from PIL import Image
from scipy import ndimage

__all__ = ["make_synthetic_case_folders", "make_synthetic_lidc_crops", "synthetic_multirater_sample", "main"]


def synthetic_multirater_sample(
    rng: np.random.Generator, image_size: Sequence[int] = (32, 32), num_raters: int = 4, empty_prob: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One ``uint8`` grayscale image ``(H, W)`` and ``num_raters`` binary masks ``(R, H, W)`` (values 0/255).

    Args:
        rng: random generator; the sample is a deterministic function of its state.
        image_size: ``(H, W)``.
        num_raters: number of rater masks.
        empty_prob: probability that a rater leaves the mask empty (LIDC graders who did not mark the lesion).
    """
    h, w = (int(s) for s in image_size)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    image = 60.0 + 120.0 * ndimage.gaussian_filter(blob.astype(float), 1.5) + rng.normal(0.0, 12.0, (h, w))
    masks = np.zeros((num_raters, h, w), dtype=np.uint8)
    for k in range(num_raters):
        if rng.random() < empty_prob:
            continue
        m = np.roll(blob, tuple(int(s) for s in rng.integers(-1, 2, 2)), axis=(0, 1))
        bias = int(rng.integers(-2, 3))
        if bias > 0:
            m = ndimage.binary_dilation(m, iterations=bias)
        elif bias < 0:
            m = ndimage.binary_erosion(m, iterations=-bias)
        masks[k] = m.astype(np.uint8) * 255
    return np.clip(image, 0, 255).astype(np.uint8), masks


def make_synthetic_case_folders(
    output_dir: PathLike,
    num_cases: int = 8,
    num_raters: int = 3,
    image_size: Sequence[int] = (32, 32),
    naming: str = "rater",
    seed: int = 0,
) -> str:
    """Write ``<output_dir>/caseNN/{image.png, rater1.png ... rater<R>.png}`` (the shared QUBIQ copy's layout).

    Args:
        output_dir: folder to create the case folders in.
        num_cases: number of cases (``case01`` ...).
        num_raters: rater masks per case.
        image_size: ``(H, W)`` of every image.
        naming: ``"rater"`` (``rater1.png``) or ``"qubiq"`` (QUBIQ's ``task01_seg01.png``).
        seed: random seed.

    Returns:
        ``output_dir`` as an absolute path.
    """
    root = os.path.abspath(os.fspath(output_dir))
    rng = np.random.default_rng(seed)
    for i in range(1, num_cases + 1):
        case = os.path.join(root, f"case{i:02d}")
        os.makedirs(case, exist_ok=True)
        image, masks = synthetic_multirater_sample(rng, image_size, num_raters)
        Image.fromarray(image).save(os.path.join(case, "image.png"))
        for k, m in enumerate(masks, start=1):
            name = f"rater{k}.png" if naming == "rater" else f"task01_seg{k:02d}.png"
            Image.fromarray(m).save(os.path.join(case, name))
    return root


def make_synthetic_lidc_crops(
    output_dir: PathLike,
    num_patients: Mapping[str, int] | None = None,
    slices_per_patient: int = 2,
    image_size: Sequence[int] = (32, 32),
    num_raters: int = 4,
    seed: int = 0,
) -> str:
    """Write the LIDC-IDRI crops layout: ``<split>/images/<patient>/z-<z>_c0.png`` + ``<split>/gt/<patient>/
    z-<z>_c0_l<k>.png`` (``k = 0 .. num_raters - 1``; about one grader in five leaves the mask empty).

    Args:
        output_dir: the ``lidc_crops`` folder to create.
        num_patients: patients per split (default ``{"train": 3, "val": 1, "test": 1}``).
        slices_per_patient: crops per patient.
        image_size: ``(H, W)`` of every crop.
        num_raters: graders per crop.
        seed: random seed.

    Returns:
        ``output_dir`` as an absolute path.
    """
    root = os.path.abspath(os.fspath(output_dir))
    rng = np.random.default_rng(seed)
    pid = 0
    for split, n in (num_patients or {"train": 3, "val": 1, "test": 1}).items():
        for _ in range(n):
            pid += 1
            patient = f"LIDC-IDRI-{pid:04d}"
            for d in ("images", "gt"):
                os.makedirs(os.path.join(root, split, d, patient), exist_ok=True)
            for s in range(slices_per_patient):
                stem = f"z-{105.0 + 2.5 * s:.1f}_c0"  # dots in the name, as in the release
                image, masks = synthetic_multirater_sample(rng, image_size, num_raters, empty_prob=0.2)
                Image.fromarray(image).save(os.path.join(root, split, "images", patient, f"{stem}.png"))
                for k, m in enumerate(masks):
                    Image.fromarray(m).save(os.path.join(root, split, "gt", patient, f"{stem}_l{k}.png"))
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--layout", choices=["case_folders", "lidc_crops"], default="case_folders")
    p.add_argument("--num_cases", type=int, default=8, help="cases (case folders) or patients per split (LIDC)")
    p.add_argument("--num_raters", type=int, default=None)
    p.add_argument("--image_size", type=int, nargs=2, default=(32, 32))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.layout == "case_folders":
        out = make_synthetic_case_folders(a.output_dir, a.num_cases, a.num_raters or 3, a.image_size, seed=a.seed)
    else:
        n = {"train": a.num_cases, "val": max(1, a.num_cases // 4), "test": max(1, a.num_cases // 4)}
        out = make_synthetic_lidc_crops(a.output_dir, n, image_size=a.image_size, num_raters=a.num_raters or 4)
    print(out)


if __name__ == "__main__":
    main()
