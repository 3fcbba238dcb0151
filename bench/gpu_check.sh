#!/usr/bin/env bash
# The one prepared call for a GPU machine lent by the workplace's device tool (no network there).
# Here, first: bash bench/gpu_wheels.sh   (downloads what the machine's image lacks into .whl/)
# Then call the device tool's run with: command "bash bench/gpu_check.sh", carry [".whl"],
# timeout_s 570. Its length is unknown (never run yet); each step is bounded by `timeout`, together
# 530 s, so the call ends inside its limit and returns whatever finished (bench/run.py rewrites its
# results after every process, so a cut-short side-by-side still comes back with what it measured).
# It writes to $OUT (at most 8 files come back): log.txt (GPU, installs, the CUDA tests), the
# study's throughput at 10,000 prompts in fp32 and bf16 (study-cuda-*.{json,md}), and
# bench/run.py's side-by-side at 10,000 prompts (cuda-10000.{json,md}): logitscope, the floor,
# nnsight 0.8, TransformerLens 4.3 (bridge and DLA tool) and 3.9, each peer with only its own
# wheels (.whl/<env>/ installed into /tmp/site-<env>) on PYTHONPATH. Copy them into bench/results/.
# Dry runs of the plumbing on a CPU machine:
#   DEVICE=cpu N=64 SKIP_INSTALL=1 OUT=/tmp/x PATH=.venv/bin:$PATH bash bench/gpu_check.sh
#     (nothing installed; the peers run in their bench/.cache/venvs environments)
#   PYVER=3.11 bash bench/gpu_wheels.sh && DEVICE=cpu N=64 OUT=/tmp/x PATH=.venv/bin:$PATH bash bench/gpu_check.sh
#     (the GPU path itself: this machine's python with the carried wheels' site folders)
set -uo pipefail
cd "$(dirname "$0")/.."
R=${OUT:-bench/results}
D=${DEVICE:-cuda}
N=${N:-10000}
mkdir -p "$R"
SITES=()
if [ -z "${SKIP_INSTALL:-}" ]; then
  install() { timeout "$1" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${@:2}"; }
  { install 40 /tmp/site .whl/project/*.whl &&
    install 20 /tmp/site-tl-4.3 .whl/tl-4.3/*.whl .whl/project/{transformers,regex,datasets,dill,multiprocess}-*.whl &&
    install 20 /tmp/site-nnsight-0.8 .whl/nnsight-0.8/*.whl .whl/project/{transformers,regex}-*.whl
  } > "$R/install.txt" 2>&1 || { cat "$R/install.txt"; exit 1; }
  SITES=(--env-site tl-4.3=/tmp/site-tl-4.3 --env-site nnsight-0.8=/tmp/site-nnsight-0.8)
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  [ -f "$R/install.txt" ] && cat "$R/install.txt" && rm "$R/install.txt"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c "import transformers, transformer_lens, plotly, circuitsvis, regex; print('imports ok', regex.__version__)"
  [ -z "${SKIP_INSTALL:-}" ] && for env in tl-4.3 nnsight-0.8; do
    PYTHONPATH=/tmp/site-$env python3 -c "import transformers, importlib.metadata as m
for d in ('transformer-lens', 'nnsight'):
    try: print('$env:', d, m.version(d), 'transformers', transformers.__version__)
    except m.PackageNotFoundError: pass"
  done
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_hot_loop.py "tests/test_options.py::test_cuda_gives_the_cpu_numbers" 2>&1 | tail -8
} > "$R/log.txt" 2>&1
cat "$R/log.txt"
timeout 80 python3 bench/study_throughput.py --n $N --device $D --repeat 4 --out "$R/study-$D-gpt2-small-float32-$N.json" 2>&1 | grep -v "Loading weights" | tail -14
timeout 50 python3 bench/study_throughput.py --n $N --device $D --dtype bfloat16 --repeat 4 --out "$R/study-$D-gpt2-small-bfloat16-$N.json" 2>&1 | grep -v "Loading weights" | tail -14
timeout 230 python3 bench/run.py --n $N --device $D --timeout 120 ${SITES[@]+"${SITES[@]}"} --out "$R/$D-$N.json" 2>&1 | grep -v "Loading weights" | tail -40
