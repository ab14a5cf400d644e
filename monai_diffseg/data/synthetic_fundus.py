# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Small synthetic fundus photographs with optic disc and cup, written in the REFUGE and Drishti-GS1 layouts (tests).

The images are procedurally drawn (no patient data): a round field of view on black, a bright elliptic optic disc,
a brighter cup inside it and a few dark vessels leaving the disc. REFUGE-like images put a small disc (about 13% of
the width) off-centre, as in a macula-centred photograph; Drishti-like images a larger one near the centre.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.utils import look_up_option
from PIL import Image
from scipy import ndimage

__all__ = ["make_synthetic_drishti_gs", "make_synthetic_refuge", "synthetic_fundus_sample"]

_STYLES = ("refuge", "drishti_gs")


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2


def synthetic_fundus_sample(
    rng: np.random.Generator, image_size: Sequence[int] = (128, 128), style: str = "refuge", num_experts: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Draw one fundus-like RGB image with its optic disc and cup.

    Args:
        rng: random generator; the sample is a deterministic function of its state.
        image_size: (H, W), each >= 32.
        style: ``"refuge"`` (small off-centre disc) or ``"drishti_gs"`` (larger, roughly centred disc).
        num_experts: number of "experts" whose slightly different outlines are counted (Drishti-GS soft maps).

    Returns:
        ``(image, disc, cup, vcdr)``: uint8 ``(H, W, 3)``; ``disc`` and ``cup`` uint8 ``(H, W)`` counting how many
        experts marked each pixel (``0..num_experts``; the cup of every expert lies inside that expert's disc); the
        vertical cup-to-disc ratio of the drawn (consensus) outlines.
    """
    style = look_up_option(style, _STYLES)
    h, w = (int(s) for s in image_size)
    if h < 32 or w < 32:
        raise ValueError(f"image_size must be >= 32 each, got {tuple(image_size)}.")
    size = min(h, w)
    fov = _ellipse((h, w), ((h - 1) / 2, (w - 1) / 2), (0.49 * h if style == "drishti_gs" else 0.47 * size,) * 2) <= 1
    if style == "refuge":
        radius = rng.uniform(0.055, 0.075) * w
        cy, cx = h / 2 + rng.uniform(-0.06, 0.06) * h, w / 2 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.22) * w
    else:
        radius = rng.uniform(0.08, 0.11) * w
        cy, cx = h / 2 + rng.uniform(-0.08, 0.08) * h, w / 2 + rng.uniform(-0.08, 0.08) * w
    disc_r = (radius, radius * rng.uniform(0.82, 0.95))  # discs are slightly taller than wide
    vcdr = rng.uniform(0.35, 0.8)
    cup_r = (disc_r[0] * vcdr, disc_r[1] * vcdr * rng.uniform(0.85, 1.0))
    cup_c = (cy + rng.uniform(-0.05, 0.05) * radius, cx + rng.uniform(-0.1, 0.1) * radius)
    disc = np.zeros((h, w), np.uint8)
    cup = np.zeros((h, w), np.uint8)
    for _ in range(num_experts):
        s_disc, s_cup = (1.0, 1.0) if num_experts == 1 else tuple(rng.uniform(0.92, 1.08, 2))
        d = _ellipse((h, w), (cy, cx), (disc_r[0] * s_disc, disc_r[1] * s_disc)) <= 1
        c = (_ellipse((h, w), cup_c, (cup_r[0] * s_cup, cup_r[1] * s_cup)) <= 1) & d
        disc += d
        cup += c

    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    retina = np.array([rng.uniform(150, 200), rng.uniform(60, 90), rng.uniform(20, 40)])
    img = retina * (1.0 - 0.35 * r**2)[..., None]
    img += 8.0 * ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), size / 40)[..., None]
    # vessels: a few dark random walks leaving the disc
    vessels = np.zeros((h, w))
    for _ in range(int(rng.integers(4, 8))):
        angle, py, px = rng.uniform(0, 2 * np.pi), cy, cx
        for _ in range(int(1.5 * size)):
            angle += rng.normal(0, 0.08)
            py, px = py + np.sin(angle), px + np.cos(angle)
            if 0 <= py < h and 0 <= px < w:
                vessels[int(py), int(px)] = 1.0
    vessels = np.clip(ndimage.gaussian_filter(vessels, max(0.6, size / 200)) * 3.0, 0, 1)
    img = img * (1 - 0.45 * vessels[..., None])
    # disc: a yellow-orange glow with a soft edge; cup: paler still
    disc_d = np.sqrt(_ellipse((h, w), (cy, cx), disc_r))
    glow = np.clip(1.3 - disc_d, 0, 1) ** 1.5
    img = img * (1 - glow[..., None]) + np.array([235.0, 170.0, 90.0]) * glow[..., None]
    cup_w = ndimage.gaussian_filter((_ellipse((h, w), cup_c, cup_r) <= 1).astype(float), max(0.8, radius / 8))
    img = img * (1 - 0.8 * cup_w[..., None]) + np.array([250.0, 225.0, 160.0]) * 0.8 * cup_w[..., None]
    img = img * fov[..., None] + rng.normal(0, 2.0, img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return image, disc * fov, cup * fov, float(vcdr)


def _size(rng: np.random.Generator, shape: tuple[int, int], mixed: bool) -> tuple[int, int]:
    if not mixed:
        return shape
    f = rng.uniform(0.8, 1.4)
    return max(32, int(shape[0] * f)), max(32, int(shape[1] * f * rng.uniform(0.9, 1.15)))


def _save(array: np.ndarray, path: str, **kwargs: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def make_synthetic_refuge(
    root: PathLike,
    num_train: int = 8,
    num_val: int = 4,
    num_test: int = 4,
    image_size: Sequence[int] = (128, 128),
    seed: int = 0,
    mixed_sizes: bool = False,
) -> str:
    """Write a synthetic dataset in the REFUGE 2018 layout (see :func:`monai_diffseg.data.refuge_datalist`).

    Training images go to ``Training400/{Glaucoma,Non-Glaucoma}/{g,n}NNNN.jpg`` (glaucoma when the drawn vCDR is
    >= 0.6) with masks ``Annotation-Training400/Disc_Cup_Masks/<same folder>/<case>.bmp``; validation
    ``REFUGE-Validation400/VNNNN.jpg`` + ``REFUGE-Validation400-GT/Disc_Cup_Masks/VNNNN.bmp``; test
    ``Test400/TNNNN.jpg`` + ``REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/TNNNN.bmp``. Masks are 8-bit BMPs with 0 = cup,
    128 = rim, 255 = background. A split with zero cases is not written.

    Args:
        root: output folder (created); it becomes the ``dataset_dir``.
        num_train, num_val, num_test: cases per split (``num_train >= 1``).
        image_size: (H, W) of every image, or the base size with ``mixed_sizes``.
        seed: random seed (each case has its own ``(seed, index)`` stream).
        mixed_sizes: vary the size per case (0.8-1.4 times ``image_size``, aspect ratio varied).

    Returns:
        Absolute path of ``root``.
    """
    if num_train < 1 or num_val < 0 or num_test < 0:
        raise ValueError(f"need num_train >= 1, num_val >= 0, num_test >= 0, got {num_train}, {num_val}, {num_test}.")
    root = os.path.abspath(os.fspath(root))
    shape = (int(image_size[0]), int(image_size[1]))
    index = 0
    for split, n in (("training", num_train), ("validation", num_val), ("test", num_test)):
        for k in range(1, n + 1):
            rng = np.random.default_rng([int(seed), index])
            index += 1
            image, disc, cup, vcdr = synthetic_fundus_sample(rng, _size(rng, shape, mixed_sizes), "refuge")
            mask = np.full(disc.shape, 255, np.uint8)
            mask[disc > 0] = 128
            mask[cup > 0] = 0
            glaucoma = vcdr >= 0.6
            if split == "training":
                case, folder = f"{'g' if glaucoma else 'n'}{k:04d}", "Glaucoma" if glaucoma else "Non-Glaucoma"
                image_path = os.path.join(root, "Training400", folder, f"{case}.jpg")
                mask_path = os.path.join(root, "Annotation-Training400", "Disc_Cup_Masks", folder, f"{case}.bmp")
            elif split == "validation":
                case = f"V{k:04d}"
                image_path = os.path.join(root, "REFUGE-Validation400", f"{case}.jpg")
                mask_path = os.path.join(root, "REFUGE-Validation400-GT", "Disc_Cup_Masks", f"{case}.bmp")
            else:
                case = f"T{k:04d}"
                image_path = os.path.join(root, "Test400", f"{case}.jpg")
                mask_path = os.path.join(
                    root, "REFUGE-Test-GT", "Disc_Cup_Masks", "G" if glaucoma else "N", f"{case}.bmp"
                )
            _save(image, image_path, quality=95)
            _save(mask, mask_path)
    return root


def make_synthetic_drishti_gs(
    root: PathLike,
    num_train: int = 8,
    num_test: int = 4,
    image_size: Sequence[int] = (112, 128),
    seed: int = 0,
    layout: str = "official",
    mixed_sizes: bool = False,
) -> str:
    """Write a synthetic dataset in a Drishti-GS1 layout (see :func:`monai_diffseg.data.drishti_gs_datalist`).

    Soft maps count 4 "experts" whose outlines differ by a few percent, stored as 0/64/128/191/255 (the release's
    levels). ``layout="official"``: ``Drishti-GS1_files/{Training,Test}/Images/drishtiGS_NNN.png`` with
    ``Training/GT/<case>/SoftMap/<case>_{OD,cup}segSoftmap.png`` (``Test/Test_GT/...``); ``layout="flat"``:
    ``images/<case>.jpg``, ``disc/<case>.png``, ``cup/<case>.png`` (training cases only, like the shared copy).

    Args:
        root: output folder (created).
        num_train, num_test: cases per split (``num_test`` unused by the flat layout).
        image_size, seed, mixed_sizes: as in :func:`make_synthetic_refuge`.
        layout: ``"official"`` or ``"flat"``.

    Returns:
        Absolute path of ``root``.
    """
    layout = look_up_option(layout, ("official", "flat"))
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train}, {num_test}.")
    root = os.path.abspath(os.fspath(root))
    shape = (int(image_size[0]), int(image_size[1]))
    levels = np.array([0, 64, 128, 191, 255], np.uint8)  # the release's levels for 0-4 of the 4 experts
    splits = (("Training", num_train),) + ((("Test", num_test),) if layout == "official" else ())
    index = 0
    for split, n in splits:
        for _ in range(n):
            rng = np.random.default_rng([int(seed), index])
            case = f"drishtiGS_{2 * index + 2:03d}"
            index += 1
            image, disc, cup, _ = synthetic_fundus_sample(rng, _size(rng, shape, mixed_sizes), "drishti_gs", 4)
            if layout == "flat":
                _save(image, os.path.join(root, "images", f"{case}.jpg"), quality=95)
                _save(levels[disc], os.path.join(root, "disc", f"{case}.png"))
                _save(levels[cup], os.path.join(root, "cup", f"{case}.png"))
                continue
            base = os.path.join(root, "Drishti-GS1_files", split)
            soft = os.path.join(base, "GT" if split == "Training" else "Test_GT", case, "SoftMap")
            _save(image, os.path.join(base, "Images", f"{case}.png"))
            _save(levels[disc], os.path.join(soft, f"{case}_ODsegSoftmap.png"))
            _save(levels[cup], os.path.join(soft, f"{case}_cupsegSoftmap.png"))
    return root
