# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The live MONAI Label test (``make label-test``) when its venv exists; skipped with the set-up command otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MONAI_LABEL_VENV", Path.home() / ".cache" / "monai-diffseg" / "monailabel-0.8.5"))


@pytest.mark.slow
def test_live_server(tmp_path: Path) -> None:
    if not (VENV / "bin" / "monailabel").is_file():
        pytest.skip(f"MONAI Label venv {VENV} absent: `make label-test` creates it once (about 10 min, 8 GB)")
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "label_test.sh"), "--workdir", str(tmp_path / "live")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = run.stdout[-6000:] + run.stderr[-4000:]
    assert run.returncode == 0, tail
    assert "[label-test] PASSED" in run.stdout, tail
