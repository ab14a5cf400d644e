# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from . import distributed, loss, prepare_batch
from .distributed import *
from .loss import *
from .prepare_batch import *

__all__ = [*distributed.__all__, *loss.__all__, *prepare_batch.__all__]
