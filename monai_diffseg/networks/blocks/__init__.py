# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .condition_encoder import AnchorHead, ConditionEncoder
from .condition_fusion import ConditionFusion
from .ff_parser import FFParser
from .torch_crf import TorchDenseCRF

__all__ = ["AnchorHead", "ConditionEncoder", "ConditionFusion", "FFParser", "TorchDenseCRF"]
