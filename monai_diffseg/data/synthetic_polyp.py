# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Small, deterministic colonoscopy-like synthetic sets in the released Kvasir-SEG and CVC-ClinicDB layouts, for tests
and smoke runs::

    python -m monai_diffseg.data.synthetic_polyp --output_dir /tmp/kvasir --dataset_format kvasir_seg --num_cases 20
    python -m monai_diffseg.data.synthetic_polyp --output_dir /tmp/cvc --dataset_format cvc_clinicdb --num_cases 8

Each image shows pink mucosa with smooth shading, a darker lumen, specular highlights and one raised, elliptical
polyp (the mask); like the real sets, sizes and aspect ratios differ from case to case. Kvasir-SEG masks are written
as lossy JPEGs (intermediate values near the border, as in the release), CVC-ClinicDB frames and masks as TIFF.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.config import PathLike
from monai.utils import look_up_option
from PIL import Image
from scipy import ndimage

__all__ = ["make_synthetic_cvc_clinicdb", "make_synthetic_kvasir_seg", "synthetic_polyp_sample", "main"]

_MIN_SIZE = 16
# (H, W) factors of the base size: Kvasir-SEG mixes 4:3, 5:4, 16:9-ish and square-ish frames (332x487 to 1920x1072)
_SIZE_FACTORS = ((1.0, 1.0), (0.75, 1.0), (0.85, 1.3), (1.0, 1.25), (0.7, 1.4))


def synthetic_polyp_sample(
    rng: np.random.Generator, image_size: Sequence[int] = (48, 64)
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one colonoscopy-like RGB frame and its polyp mask.

    Args:
        rng: random generator; the sample is a deterministic function of its state.
        image_size: spatial size (H, W), each at least 16.

    Returns:
        ``(image, mask)``: uint8 image (H, W, 3) and mask (H, W) in {0, 1}; the polyp covers about 4% to 30%.

    Raises:
        ValueError: ``image_size`` is not two integers >= 16.
    """
    if len(image_size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= _MIN_SIZE for s in image_size):
        raise ValueError(f"image_size must be two integers (H, W) >= {_MIN_SIZE}, got {tuple(image_size)!r}.")
    h, w = int(image_size[0]), int(image_size[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    scale = min(h, w)

    # mucosa: pink-red base, smooth illumination falling off towards a dark lumen
    base = np.array([rng.uniform(170, 220), rng.uniform(80, 120), rng.uniform(70, 110)])
    ly, lx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    lumen = np.exp(-(((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * (0.18 * scale) ** 2)))
    shading = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (h, w)), scale / 6)
    shading /= np.abs(shading).max() + 1e-8
    img = base * (1.0 + 0.12 * shading[..., None]) * (1.0 - 0.7 * lumen[..., None])

    # polyp: a rotated, boundary-perturbed ellipse, brighter and redder with a radial (domed) shading
    area = rng.uniform(0.04, 0.3) * h * w
    aspect = rng.uniform(0.6, 1.0)
    a = np.sqrt(area / (np.pi * aspect))
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    angle = rng.uniform(0.0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (a * aspect)
    theta = np.arctan2(v, u)
    wobble = 1.0 + 0.08 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi)) + 0.05 * np.cos(5 * theta)
    r = np.hypot(u, v) / wobble
    mask = r < 1.0
    dome = np.clip(1.0 - r, 0.0, 1.0)
    tone = np.array([rng.uniform(200, 245), rng.uniform(110, 150), rng.uniform(90, 130)])
    polyp = tone * (0.8 + 0.3 * dome[..., None])
    edge = ndimage.gaussian_filter(mask.astype(float), max(0.7, scale / 96))
    img = img * (1.0 - edge[..., None]) + polyp * edge[..., None]

    # specular highlights (white blobs), over mucosa and polyp alike
    for _ in range(int(rng.integers(2, 6))):
        sy, sx, sr = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.01, 0.03) * scale + 0.5
        spot = np.exp(-(((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * sr**2)))
        img = img * (1.0 - spot[..., None]) + 255.0 * spot[..., None]

    # the endoscope's dark rounded corners
    rr = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    img *= (1.0 - 1.0 / (1.0 + np.exp(-(rr - 1.25) / 0.03)))[..., None]
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _sizes(num_cases: int, image_size: Sequence[int], mixed_sizes: bool) -> list[tuple[int, int]]:
    """One (H, W) per case: ``image_size`` scaled by the factors of :data:`_SIZE_FACTORS` in turn when mixed."""
    h, w = int(image_size[0]), int(image_size[1])
    factors = _SIZE_FACTORS if mixed_sizes else ((1.0, 1.0),)
    return [
        (max(_MIN_SIZE, round(h * fy)), max(_MIN_SIZE, round(w * fx)))
        for fy, fx in (factors[i % len(factors)] for i in range(num_cases))
    ]


def _check_count(num_cases: int) -> None:
    if not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be an integer >= 1, got {num_cases!r}.")


def make_synthetic_kvasir_seg(
    root: PathLike,
    num_cases: int = 20,
    image_size: Sequence[int] = (48, 64),
    seed: int = 0,
    mixed_sizes: bool = True,
) -> str:
    """Write a synthetic set in the released Kvasir-SEG layout::

        <root>/Kvasir-SEG/images/<id>.jpg       RGB JPEG (quality 90)
        <root>/Kvasir-SEG/masks/<id>.jpg        RGB JPEG mask (quality 75: lossy, values around 0 and 255)
        <root>/Kvasir-SEG/kavsir_bboxes.json    {id: {"height", "width", "bbox": [{"label", "xmin", ...}]}}

    ids are 25 lowercase letters/digits like the release's (``cju0qkwl35piu0993l0dewei2``).

    Args:
        root: output folder (created if needed); pass it (or ``<root>/Kvasir-SEG``) as ``dataset_dir``.
        num_cases: number of image/mask pairs (>= 1).
        image_size: base spatial size (H, W), each >= 16.
        seed: random seed; each case draws from its own ``(seed, index)`` stream.
        mixed_sizes: vary size and aspect ratio per case, as the release does.

    Returns:
        Absolute path of ``root``.
    """
    _check_count(num_cases)
    root = os.path.abspath(os.fspath(root))
    base = Path(root, "Kvasir-SEG")
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    bboxes: dict[str, dict] = {}
    for index, size in enumerate(_sizes(num_cases, image_size, mixed_sizes)):
        rng = np.random.default_rng([int(seed), index])
        image, mask = synthetic_polyp_sample(rng, size)
        case = "cj" + "".join(rng.choice(alphabet, 23))
        Image.fromarray(image).save(base / "images" / f"{case}.jpg", quality=90)
        Image.fromarray(np.repeat(mask[..., None] * np.uint8(255), 3, -1)).save(
            base / "masks" / f"{case}.jpg", quality=75
        )
        ys, xs = np.nonzero(mask)
        box = {
            "label": "polyp",
            "xmin": int(xs.min()),
            "ymin": int(ys.min()),
            "xmax": int(xs.max()),
            "ymax": int(ys.max()),
        }
        bboxes[case] = {"height": size[0], "width": size[1], "bbox": [box]}
    (base / "kavsir_bboxes.json").write_text(json.dumps(bboxes), encoding="utf-8")
    return root


def make_synthetic_cvc_clinicdb(
    root: PathLike,
    num_cases: int = 8,
    image_size: Sequence[int] = (36, 48),
    seed: int = 0,
    mixed_sizes: bool = True,
    file_format: str = "tif",
) -> str:
    """Write a synthetic set in the released CVC-ClinicDB layout::

        file_format="tif":  <root>/CVC-ClinicDB/Original/<n>.tif + <root>/CVC-ClinicDB/Ground Truth/<n>.tif
        file_format="png":  <root>/PNG/Original/<n>.png + <root>/PNG/Ground Truth/<n>.png   (the PNG re-release)

    with ``n`` = 1..``num_cases``; frames are RGB, masks 8-bit grayscale {0, 255}. (The real frames are all 384x288;
    ``mixed_sizes`` varies them anyway so that tests cover outputs at several sizes.)

    Args:
        root: output folder (created if needed); it is the ``dataset_dir``.
        num_cases: number of frames (>= 1).
        image_size: base spatial size (H, W), each >= 16.
        seed: random seed; each frame draws from its own ``(seed, 1000 + index)`` stream.
        mixed_sizes: vary the size per frame.
        file_format: ``"tif"`` (official release) or ``"png"`` (re-release).

    Returns:
        Absolute path of ``root``.
    """
    _check_count(num_cases)
    file_format = look_up_option(file_format, ("tif", "png"))
    root = os.path.abspath(os.fspath(root))
    base = Path(root, "CVC-ClinicDB" if file_format == "tif" else "PNG")
    (base / "Original").mkdir(parents=True, exist_ok=True)
    (base / "Ground Truth").mkdir(parents=True, exist_ok=True)
    for index, size in enumerate(_sizes(num_cases, image_size, mixed_sizes)):
        image, mask = synthetic_polyp_sample(np.random.default_rng([int(seed), 1000 + index]), size)
        Image.fromarray(image).save(base / "Original" / f"{index + 1}.{file_format}")
        Image.fromarray(mask * np.uint8(255)).save(base / "Ground Truth" / f"{index + 1}.{file_format}")
    return root


def main(argv: Sequence[str] | None = None) -> str:
    """Command line (``argv``, default ``sys.argv[1:]``): write a synthetic set, print and return its path."""
    parser = argparse.ArgumentParser(description="Write a synthetic Kvasir-SEG or CVC-ClinicDB-style polyp dataset.")
    parser.add_argument("--output_dir", dest="root", metavar="OUTPUT_DIR", required=True, help="dataset folder")
    parser.add_argument("--dataset_format", choices=("kvasir_seg", "cvc_clinicdb"), default="kvasir_seg")
    parser.add_argument("--num_cases", type=int, default=20)
    parser.add_argument("--image_size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--file_format", choices=("tif", "png"), default="tif", help="CVC-ClinicDB only")
    args = vars(parser.parse_args(argv))
    dataset_format, file_format = args.pop("dataset_format"), args.pop("file_format")
    if dataset_format == "kvasir_seg":
        path = make_synthetic_kvasir_seg(**args)
    else:
        path = make_synthetic_cvc_clinicdb(**args, file_format=file_format)
    print(path)
    return path


if __name__ == "__main__":
    main()
