# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""BraTS at reduced resolution for CPU budgets: copy ../shared/data/brats18 to 2 mm (120x120x78) in the same official
layout (images trilinear, seg nearest; affine scaled), so the bundle runs unchanged on a CPU budget.
Usage: python benchmarks/brats_downsample.py ../shared/data/brats18 /tmp/brats2mm"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for case in sorted(p for p in src.iterdir() if p.is_dir()):
    (dst / case.name).mkdir(parents=True, exist_ok=True)
    for f in sorted(case.glob("*.nii.gz")):
        img = nib.load(str(f))
        data = np.asarray(img.dataobj)
        seg = f.name.endswith("_seg.nii.gz")
        out = ndimage.zoom(data.astype(np.float32), 0.5, order=0 if seg else 1)
        affine = img.affine.copy()
        affine[:3, :3] *= 2.0
        nib.save(nib.Nifti1Image(out.astype(np.uint8 if seg else np.int16), affine), str(dst / case.name / f.name))
    print(case.name, out.shape, flush=True)
