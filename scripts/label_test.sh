#!/usr/bin/env bash
# Live MONAI Label test (make label-test): creates the MONAI Label venv once, installs monai_diffseg into it, then runs
# scripts/label_test.py in it (a real server on 127.0.0.1 with apps/monailabel and a synthetic study; see that file).
#   MONAI_LABEL_VENV   venv location (default: $HOME/.cache/monai-diffseg/monailabel-0.8.5, shared by every clone)
#   PYTHON             interpreter that creates the venv (default: python3; MONAI Label 0.8.5 needs 3.9-3.11)
# Extra arguments go to label_test.py (--help lists them).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAI_LABEL_VENV:-$HOME/.cache/monai-diffseg/monailabel-0.8.5}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/monailabel" ]; then
    echo "[label-test] creating the MONAI Label venv $VENV (once: about 10 minutes and 8 GB, it pulls a CUDA torch)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install monailabel==0.8.5 "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60"
fi

# monai_diffseg from this clone, editable; only the requirements the venv lacks (never its torch)
installed="$(cd / && "$VENV/bin/python" -c 'import monai_diffseg, os; print(os.path.dirname(os.path.dirname(monai_diffseg.__file__)))' 2>/dev/null || true)"
if [ "$installed" != "$REPO" ]; then
    echo "[label-test] installing monai_diffseg from $REPO into $VENV"
    "$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO"
fi
missing="$(cd / && "$VENV/bin/python" - <<'PY'
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
for line in requires("monai-diffseg") or []:
    req = Requirement(line)
    if req.marker is not None or req.name == "torch":
        continue  # extras, and the venv's own CUDA torch
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            print(str(req))
    except PackageNotFoundError:
        print(str(req))
PY
)"
if [ -n "$missing" ]; then
    echo "[label-test] installing what monai_diffseg needs: $missing"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet $missing
fi

# the monailabel launcher and its subprocesses run whatever python is first on PATH
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
exec "$VENV/bin/python" "$REPO/scripts/label_test.py" "$@"
