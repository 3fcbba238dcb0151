#!/usr/bin/env bash
# Create .venv with logitscope and its test dependencies (CPU torch). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
# The CPU build of torch (an unpinned torch would pull a multi-GB CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import logitscope, transformer_lens, circuitsvis, plotly, gguf"
