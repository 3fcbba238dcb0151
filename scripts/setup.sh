#!/usr/bin/env bash
# Create .venv with logitscope and its test dependencies. Safe to run again.
#
# PyTorch 2.13.0, the build chosen by the machine: a torch 2.13.0 already in .venv is kept; else a
# wheel pip finds without an index (pip's --find-links folders) is used; else on Linux without an
# NVIDIA GPU (no nvidia-smi) the CPU build from download.pytorch.org (about 200 MB; PyPI's Linux wheel
# is the CUDA build, several GB); else PyPI's (the CUDA build on Linux with a GPU, the usual one on macOS).
# LOGITSCOPE_TORCH_INDEX=URL overrides the choice (e.g. https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.13.0
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install() { .venv/bin/python -m pip install -q "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
has_torch() {  # installed at $TORCH (by its metadata: its dependencies may come later)
  .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('torch').split('+')[0] != '$TORCH')" 2>/dev/null
}
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
if has_torch; then
  echo "setup: torch $TORCH already in .venv"
elif [ -n "${LOGITSCOPE_TORCH_INDEX:-}" ]; then
  echo "setup: torch $TORCH from $LOGITSCOPE_TORCH_INDEX"
  pip_install "torch==$TORCH" --index-url "$LOGITSCOPE_TORCH_INDEX"
elif .venv/bin/python -m pip install -q --no-index --no-deps "torch==$TORCH" >/dev/null 2>&1; then
  echo "setup: torch $TORCH from a wheel already on this machine (its dependencies come with logitscope's)"
elif [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: no NVIDIA GPU: the CPU build of torch $TORCH"
  pip_install "torch==$TORCH" --index-url https://download.pytorch.org/whl/cpu
else
  echo "setup: torch $TORCH from PyPI"
  pip_install "torch==$TORCH"
fi
has_torch || { echo "setup: torch $TORCH did not install (see pip's message above)" >&2; exit 1; }
pip_install -e ".[test,docs]"
.venv/bin/python -c "import logitscope, transformer_lens, circuitsvis, plotly, gguf, importlinter, mkdocs"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
