#!/usr/bin/env bash
# One prepared run for a GPU machine lent by the workplace's device tool (no network there).
# Prepare here first (x86-64, Python 3.12 wheels for what the GPU image lacks), into .whl/ which
# .git/info/exclude ignores, then carry .whl and call this script:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl transformers==5.24.0 tokenizers==0.23.3 safetensors huggingface-hub plotly circuitsvis \
#     transformer-lens==3.9.0 einops jaxtyping tqdm regex   # plus whatever `pip check` there reports
#   run: bash bench/gpu_check.sh   (carry: .whl)
# It runs the test suite's CUDA test and the benchmark at 10,000 prompts, writing bench/results/ to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pytest -q tests/test_options.py -k "cuda or batch_size" -p no:cacheprovider 2>&1 | tail -5
python3 bench/run.py --n 10000 --device cuda --out "${OUT:-bench/results}/cuda-10000.json" 2>&1 | tail -20
