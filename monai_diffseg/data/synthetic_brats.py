# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Small, deterministic brain-tumour MRI volumes in the official BraTS layouts, for tests and smoke runs::

    python -m monai_diffseg.data.synthetic_brats --output_dir /tmp/brats18 --dataset_format brats2018 --num_cases 4
    python -m monai_diffseg.data.synthetic_brats --output_dir /tmp/brats23 --dataset_format brats2023 --num_cases 4

Each case is an ellipsoidal "brain" (zero outside, as in the skull-stripped releases) with smooth tissue shading and a
tumour of three nested parts: oedema (label 2) around a core of necrosis (1) and an enhancing rim (4, or 3 for BraTS
2023). The four modalities show the parts with their typical contrasts (enhancing rim bright on T1-Gd, oedema bright on
T2 and FLAIR). Volumes are int16 NIfTI with the BraTS affine (``diag(-1, -1, 1)``, origin at the last row/column)
plus a per-case shift, so a test can check that outputs keep the input's geometry; one FLAIR voxel per case is
saturated at 32767 like some real FLAIR volumes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.config import PathLike
from monai.utils import look_up_option, optional_import
from scipy import ndimage

from monai_diffseg.data.brats import BRATS_ET_LABEL, BRATS_MODALITIES

nib, _ = optional_import("nibabel")

__all__ = ["make_synthetic_brats", "synthetic_brats_sample", "main"]

_MIN_SIZE = 16
# mean intensity of (background tissue, oedema, necrosis, enhancing) per modality: T1, T1-Gd, T2, FLAIR
_CONTRAST = np.array(
    [
        [500.0, 420.0, 300.0, 480.0],
        [520.0, 480.0, 250.0, 1100.0],
        [700.0, 1300.0, 1500.0, 900.0],
        [400.0, 900.0, 600.0, 650.0],
    ]
)


def synthetic_brats_sample(
    rng: np.random.Generator, shape: Sequence[int] = (32, 32, 32), et_label: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one 4-modality brain volume and its BraTS label map.

    Args:
        rng: random generator; the sample is a deterministic function of its state.
        shape: spatial size ``(H, W, D)``, each at least 16.
        et_label: label of the enhancing tumour (4: BraTS 2018-2021, 3: BraTS 2023).

    Returns:
        ``(image, seg)``: int16 ``(4, H, W, D)`` (T1, T1-Gd, T2, FLAIR; 0 outside the brain) and uint8 ``(H, W, D)``
        with values in ``{0, 1, 2, et_label}`` (all four present).

    Raises:
        ValueError: ``shape`` is not three integers >= 16, or ``et_label`` is not 3 or 4.
    """
    if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and s >= _MIN_SIZE for s in shape):
        raise ValueError(f"shape must be three integers (H, W, D) >= {_MIN_SIZE}, got {tuple(shape)!r}.")
    if et_label not in (3, 4):
        raise ValueError(f"et_label must be 4 (BraTS 2018-2021) or 3 (BraTS 2023), got {et_label}.")
    size = np.asarray(shape, dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"))
    centre = size / 2 + rng.uniform(-0.05, 0.05, 3) * size
    brain = (((grid - centre[:, None, None, None]) / (0.42 * size[:, None, None, None])) ** 2).sum(0) <= 1.0

    # tumour inside the brain: oedema ellipsoid around a core whose rim enhances and whose centre is necrotic
    t_centre = centre + rng.uniform(-0.12, 0.12, 3) * size
    radii = rng.uniform(0.13, 0.2, 3) * size
    r = np.sqrt((((grid - t_centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    seg = np.zeros(shape, dtype=np.uint8)
    seg[(r <= 1.0) & brain] = 2
    seg[r <= rng.uniform(0.55, 0.7)] = et_label
    seg[r <= rng.uniform(0.25, 0.4)] = 1
    seg[~brain] = 0

    part = np.select([seg == 2, seg == 1, seg == et_label], [1, 2, 3], default=0)
    shading = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), min(shape) / 6)
    shading /= np.abs(shading).max() + 1e-8
    image = np.zeros((4, *shape), dtype=np.float64)
    for m in range(4):
        value = _CONTRAST[m][part] * rng.uniform(0.9, 1.1) * (1.0 + 0.1 * shading)
        value += rng.normal(0.0, 25.0, shape)
        image[m] = np.where(brain, np.clip(value, 1.0, None), 0.0)
    flat = np.flatnonzero(brain)
    image[3].flat[flat[rng.integers(flat.size)]] = 32767.0  # a saturated FLAIR voxel, as in some real volumes
    return np.round(image).astype(np.int16), seg


def _affine(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """The BraTS affine ``diag(-1, -1, 1)`` with origin ``(0, H - 1, 0)``, shifted by a few mm per case."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [0.0, shape[1] - 1.0, 0.0]
    affine[:3, 3] += np.round(rng.uniform(-5.0, 5.0, 3), 1)
    return affine


def make_synthetic_brats(
    output_dir: PathLike,
    dataset_format: str = "brats2018",
    num_cases: int = 4,
    shape: Sequence[int] = (32, 32, 32),
    seed: int = 0,
    labels: bool = True,
) -> str:
    """Write ``num_cases`` synthetic cases in a BraTS layout under ``output_dir``.

    Layouts: ``"brats2018"`` (2018-2021): ``Brats18_Synth_<k>_1/Brats18_Synth_<k>_1_{t1,t1ce,t2,flair,seg}.nii.gz``,
    enhancing tumour 4; ``"brats2023"``: ``BraTS-GLI-<kkkkk>-000/BraTS-GLI-<kkkkk>-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
    enhancing tumour 3. A ``dataset.json`` records the layout and cases.

    Args:
        output_dir: folder that will hold the case folders (created).
        dataset_format: ``"brats2018"`` or ``"brats2023"``.
        num_cases: number of cases (>= 1).
        shape: volume size ``(H, W, D)``, each >= 16.
        seed: seed of the whole set.
        labels: write the ``seg`` files (``False``: a validation-style release without them).

    Returns:
        ``output_dir`` as an absolute path.

    Raises:
        ValueError: unknown ``dataset_format``, ``num_cases < 1`` or a bad ``shape``.
        ModuleNotFoundError: ``nibabel`` is not installed.
    """
    fmt = look_up_option(dataset_format, ("brats2018", "brats2023"))
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}.")
    if not hasattr(nib, "Nifti1Image"):
        raise ModuleNotFoundError("make_synthetic_brats writes NIfTI with nibabel: pip install nibabel.")
    root = Path(output_dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(num_cases):
        case = f"Brats18_Synth_{k}_1" if fmt == "brats2018" else f"BraTS-GLI-{k:05d}-000"
        sep = "_" if fmt == "brats2018" else "-"
        image, seg = synthetic_brats_sample(rng, shape, BRATS_ET_LABEL[fmt])
        affine = _affine(rng, shape)
        folder = root / case
        folder.mkdir(exist_ok=True)
        for m, modality in enumerate(BRATS_MODALITIES[fmt]):
            nib.save(nib.Nifti1Image(image[m], affine), str(folder / f"{case}{sep}{modality}.nii.gz"))
        if labels:
            nib.save(nib.Nifti1Image(seg, affine), str(folder / f"{case}{sep}seg.nii.gz"))
        cases.append(case)
    info = {"dataset_format": fmt, "shape": [int(s) for s in shape], "seed": seed, "labels": labels, "cases": cases}
    (root / "dataset.json").write_text(json.dumps(info, indent=2))
    return os.fspath(root)


def main(argv: Sequence[str] | None = None) -> str:
    """Command line: ``python -m monai_diffseg.data.synthetic_brats --output_dir DIR [--dataset_format ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset_format", default="brats2018", choices=["brats2018", "brats2023"])
    parser.add_argument("--num_cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_labels", action="store_true", help="omit the seg files (validation-style release)")
    args = parser.parse_args(argv)
    out = make_synthetic_brats(
        args.output_dir, args.dataset_format, args.num_cases, tuple(args.shape), args.seed, not args.no_labels
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
