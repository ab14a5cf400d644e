# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Small shared utilities."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """
    Open a temporary file beside ``path`` for writing and move it onto ``path`` with ``os.replace`` on success,
    so readers never see a partial file; on any error the temporary file is removed and ``path`` is untouched.
    Missing parent folders are created.

    Args:
        path: destination file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        open_kwargs: passed to ``os.fdopen`` (e.g. ``newline=""`` for CSV).
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
