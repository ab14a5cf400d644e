# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from monai_diffseg.utils import atomic_write


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_atomic_write_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, newline="") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_write_file_mode_follows_umask(tmp_path: Path) -> None:
    # a plain open() gives 0666 minus the umask; mkstemp's 0600 would hide reports from other users
    old = os.umask(0o022)
    try:
        target = tmp_path / "report.html"
        with atomic_write(target) as f:
            f.write("x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(old)
