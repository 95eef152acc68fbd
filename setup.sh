#!/usr/bin/env bash
# Create .venv beside this file and install hwnas with everything its tests need. Idempotent.
# torch is pinned to 2.13.0: that version resolves to the local CPU wheel; an unpinned torch pulls
# a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,tvm]"
