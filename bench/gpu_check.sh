#!/usr/bin/env bash
# The one prepared call for a GPU machine lent by the workplace's device tool (no network there).
# Here, first: bash bench/gpu_wheels.sh   (downloads what the machine's image lacks into .whl/)
# Then call the device tool's run with: command "bash bench/gpu_check.sh", carry [".whl"],
# timeout_s 540. Its length is unknown (never run yet); each step is bounded by `timeout`, together
# 480 s, so the call ends inside its limit and returns whatever finished.
# It writes to $OUT (at most 8 files come back): log.txt (GPU, the CUDA tests), the study's
# throughput at 10,000 prompts in fp32 and bf16 (study-cuda-*.{json,md}), and bench/run.py's
# side-by-side at 10,000 prompts (cuda-10000.{json,md}). Copy them into bench/results/ afterwards.
# A dry run of the plumbing on a CPU machine: DEVICE=cpu N=64 SKIP_INSTALL=1 OUT=/tmp/x PATH=.venv/bin:$PATH bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
R=${OUT:-bench/results}
D=${DEVICE:-cuda}
N=${N:-10000}
mkdir -p "$R"
[ -n "${SKIP_INSTALL:-}" ] || timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c "import transformers, transformer_lens, plotly, circuitsvis, regex; print('imports ok', regex.__version__)"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_hot_loop.py "tests/test_options.py::test_cuda_gives_the_cpu_numbers" 2>&1 | tail -8
} > "$R/log.txt" 2>&1
cat "$R/log.txt"
timeout 80 python3 bench/study_throughput.py --n $N --device $D --repeat 4 --out "$R/study-$D-gpt2-small-float32-$N.json" 2>&1 | grep -v "Loading weights" | tail -14
timeout 50 python3 bench/study_throughput.py --n $N --device $D --dtype bfloat16 --repeat 4 --out "$R/study-$D-gpt2-small-bfloat16-$N.json" 2>&1 | grep -v "Loading weights" | tail -14
timeout 200 python3 bench/run.py --n $N --device $D --timeout 120 --out "$R/$D-$N.json" 2>&1 | tail -16
