# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Small, deterministic, thyroid-ultrasound-like synthetic data in both DDTI layouts, for tests and smoke runs::

    python -m monai_diffseg.data.synthetic_ddti --output_dir /tmp/ddti_xml --dataset_format xml --num_patients 8

Each frame is speckled grayscale tissue (multiplicative Rayleigh noise over smooth echogenicity, darker with depth)
with one or two darker, rounded nodules with a bright rim; the nodule outlines are the annotation. The ``"xml"``
layout writes frames ``<patient>_<frame>.jpg`` and one ``<patient>.xml`` per patient as the original release does;
the ``"folders"`` layout writes nodule-centred square crops ``images/<patient>_<frame>(<k>).png`` with GIF masks
``masks/...gif`` as the widely shared re-release does (``(<k>)`` only when a frame has several nodules), plus one
empty mask (that re-release has a few).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from xml.etree import ElementTree

import numpy as np
from monai.config import PathLike
from PIL import Image
from scipy import ndimage

from monai_diffseg.data.ddti import rasterize_polygons

__all__ = ["make_synthetic_ddti", "synthetic_ultrasound_sample", "main"]

_MIN_SIZE = 16


def synthetic_ultrasound_sample(
    rng: np.random.Generator, image_size: Sequence[int] = (36, 56), num_nodules: int = 1
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw one ultrasound-like frame and its nodule outlines.

    Args:
        rng: random generator; the sample is a deterministic function of its state.
        image_size: ``(H, W)``, each at least 16.
        num_nodules: nodules side by side (1 or 2).

    Returns:
        ``(image, outlines)``: uint8 image ``(H, W)`` and one ``(K, 2)`` outline of ``(x, y)`` points per nodule,
        left to right.
    """
    h, w = (int(s) for s in image_size)
    if min(h, w) < _MIN_SIZE or num_nodules not in (1, 2):
        raise ValueError(f"image_size must be >= {_MIN_SIZE} and num_nodules 1 or 2, got {image_size}, {num_nodules}.")
    yy = np.mgrid[0:h, 0:w][0].astype(float)
    echo = 0.55 + 0.15 * ndimage.gaussian_filter(rng.normal(size=(h, w)), min(h, w) / 6) / 0.05
    echo = np.clip(echo, 0.25, 0.9) * (1.0 - 0.35 * yy / h)  # attenuation with depth
    outlines = []
    for k in range(num_nodules):
        cx = w * (k + 0.5) / num_nodules + rng.uniform(-0.05, 0.05) * w
        cy = h * rng.uniform(0.4, 0.6)
        ry = h * rng.uniform(0.15, 0.25)
        rx = min(w / (2.4 * num_nodules), ry * rng.uniform(1.0, 1.5))
        theta = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
        wobble = 1.0 + 0.08 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
        outline = np.stack([cx + rx * wobble * np.cos(theta), cy + ry * wobble * np.sin(theta)], 1)
        outlines.append(outline)
        inside = rasterize_polygons([outline], (h, w)).astype(bool)
        echo = np.where(inside, echo * rng.uniform(0.35, 0.6), echo)
        rim = inside & ~ndimage.binary_erosion(inside)
        echo = echo + 0.6 * ndimage.gaussian_filter(rim.astype(float), 0.7)  # bright rim (halo)
    speckle = rng.rayleigh(1.0 / np.sqrt(np.pi / 2), size=(h, w))  # mean 1
    img = 255.0 * ndimage.gaussian_filter(echo * speckle, 0.6)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), outlines


def _xml_text(patient: int, frames: dict[int, list[np.ndarray] | None], rng: np.random.Generator) -> bytes:
    """A ``<patient>.xml`` as the original release writes it (``None`` outlines: an empty ``<svg>``)."""
    case = ElementTree.Element("case")
    fields = {
        "number": str(patient),
        "age": str(int(rng.integers(20, 80))),
        "sex": str(rng.choice(["F", "M"])),
        "composition": "solid",
        "echogenicity": "hypoechogenicity",
        "margins": "well defined",
        "calcifications": "non",
        "tirads": str(rng.choice(["2", "3", "4a", "4b", "5"])),
        "reportbacaf": "",
        "reporteco": "",
    }
    for tag, text in fields.items():
        ElementTree.SubElement(case, tag).text = text
    for frame, outlines in frames.items():
        mark = ElementTree.SubElement(case, "mark")
        ElementTree.SubElement(mark, "image").text = str(frame)
        shapes = [
            {"points": [{"x": int(round(x)), "y": int(round(y))} for x, y in o], "annotationType": "freehand"}
            for o in outlines or []
        ]
        ElementTree.SubElement(mark, "svg").text = json.dumps(shapes) if outlines else ""
    return ElementTree.tostring(case, encoding="utf-8", xml_declaration=True)


def make_synthetic_ddti(
    output_dir: PathLike,
    dataset_format: str = "folders",
    num_patients: int = 6,
    image_size: Sequence[int] = (36, 56),
    crop_size: int = 32,
    seed: int = 0,
) -> str:
    """Write a small synthetic DDTI set in one of its layouts.

    Patient ``p`` (numbered from 1) has 1 or 2 frames (every third patient 2), every second frame shows 2 nodules.
    ``"xml"``: frames ``<p>_<f>.jpg`` (every fourth frame 8 px wider: mixed sizes) and ``<p>.xml``; the last patient's
    second frame (or a third frame added to it) has an empty ``<svg>`` (unannotated). ``"folders"``: for each nodule a
    square crop of ``crop_size`` around it, ``images/<p>_<f>[(<k>)].png`` + ``masks/<same>.gif`` (0/255), and the mask
    of the last crop emptied.

    Args:
        output_dir: folder to write into (created).
        dataset_format: ``"folders"`` or ``"xml"``.
        num_patients: patients (at least 2).
        image_size: ``(H, W)`` of the frames.
        crop_size: side of the crops (``"folders"``).
        seed: random seed; the same arguments write the same files.

    Returns:
        ``output_dir`` as an absolute path.
    """
    if dataset_format not in ("folders", "xml"):
        raise ValueError(f"dataset_format must be 'folders' or 'xml', got {dataset_format!r}.")
    if num_patients < 2:
        raise ValueError(f"num_patients must be at least 2, got {num_patients}.")
    root = os.path.abspath(os.fspath(output_dir))
    rng = np.random.default_rng(seed)
    if dataset_format == "folders":
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    else:
        os.makedirs(root, exist_ok=True)
    frame_index = 0
    last_mask = None
    for patient in range(1, num_patients + 1):
        frames: dict[int, list[np.ndarray] | None] = {}
        for frame in range(1, 2 + (patient % 3 == 0)):
            size = (int(image_size[0]), int(image_size[1]) + (8 if frame_index % 4 == 3 else 0))
            image, outlines = synthetic_ultrasound_sample(rng, size, 1 + frame_index % 2)
            frame_index += 1
            stem = f"{patient}_{frame}"
            if dataset_format == "xml":
                Image.fromarray(image, mode="L").save(os.path.join(root, f"{stem}.jpg"), quality=95)
                frames[frame] = outlines
                continue
            mask = rasterize_polygons(outlines, image.shape)
            for k, outline in enumerate(outlines, start=1):
                (x0, y0), (x1, y1) = outline.min(0), outline.max(0)
                margin = 0.15 * max(x1 - x0, y1 - y0)
                box = (int(max(0, x0 - margin)), int(max(0, y0 - margin)))
                box += (int(min(size[1], x1 + margin + 1)), int(min(size[0], y1 + margin + 1)))
                name = stem if len(outlines) == 1 else f"{stem}({k})"
                crop = Image.fromarray(image).crop(box).resize((crop_size, crop_size), Image.BILINEAR)
                crop_mask = Image.fromarray(mask * 255).crop(box).resize((crop_size, crop_size), Image.NEAREST)
                crop.save(os.path.join(root, "images", f"{name}.png"))
                last_mask = os.path.join(root, "masks", f"{name}.gif")
                crop_mask.save(last_mask, optimize=False)  # full grey palette: read back as "L" 0/255
        if dataset_format == "xml":
            if patient == num_patients:  # an unannotated frame, as a few in the release
                if len(frames) == 1:
                    image, _ = synthetic_ultrasound_sample(rng, image_size, 1)
                    Image.fromarray(image, mode="L").save(os.path.join(root, f"{patient}_2.jpg"), quality=95)
                frames[2] = None
            with open(os.path.join(root, f"{patient}.xml"), "wb") as f:
                f.write(_xml_text(patient, frames, rng))
    if last_mask is not None:
        Image.new("L", (crop_size, crop_size), 0).save(last_mask, optimize=False)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write a synthetic DDTI set (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset_format", choices=("folders", "xml"), default="folders")
    parser.add_argument("--num_patients", type=int, default=6)
    parser.add_argument("--image_size", type=int, nargs=2, default=(36, 56), metavar=("H", "W"))
    parser.add_argument("--crop_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_synthetic_ddti(**vars(args)))


if __name__ == "__main__":
    main()
