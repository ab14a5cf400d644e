# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .binary_mask import BinaryMask, BinaryMaskd, BinaryMaskD, BinaryMaskDict
