#!/usr/bin/env bash
# Download, here, the wheels a GPU machine of the device tool lacks for bench/gpu_check.sh, into
# .whl/ (in .gitignore; carried to the machine with `carry: [".whl"]`; ~40 MB of the 64 MiB a
# call may carry). One folder per environment, as bench/run.py runs them:
#
# - .whl/project/: logitscope's own (src/ on PYTHONPATH) and the TransformerLens 3.9 and floor
#   contenders. The machine's image (/work/.library/device/KINDS.md) has Python 3.12, torch,
#   accelerate, huggingface-hub 1.33, tokenizers 0.23, safetensors, numpy, pandas, pyarrow, rich,
#   einops, jaxtyping, sentencepiece, narwhals, tqdm, typer, ... and transformers 5.17. What it
#   lacks, at the versions this repo's tests run (.venv): transformers 5.24 (the version
#   logitscope is tested with), TransformerLens 3.9 and what it imports (datasets, dill,
#   multiprocess, beartype, typeguard, better-abc, fancy-einsum; not
#   transformers-stream-generator, an sdist TransformerLens declares but never imports),
#   circuitsvis (importlib-metadata, lazy-importer) and plotly; and regex (transformers 5.24 will
#   not import with a regex older than 2025.10.22, and the image's version is unknown).
# - .whl/tl-4.3/: TransformerLens 4.3.0 (bench/envs/tl-4.3.txt's pin); with transformers, regex,
#   datasets, dill and multiprocess from .whl/project/, it is every package the contender
#   imports that the image lacks (read off `sys.modules` after a run here).
# - .whl/nnsight-0.8/: nnsight 0.8.1 and what it imports that the image lacks (greenlet, pydantic,
#   pydantic-core, annotated-types, typing-inspection, zstandard; versions of
#   bench/envs/nnsight-0.8.txt); transformers and regex from .whl/project/.
#
# gpu_check.sh installs each folder into its own --target (/tmp/site, /tmp/site-tl-4.3,
# /tmp/site-nnsight-0.8) and bench/run.py runs each peer with only its own folder on PYTHONPATH.
#
#   bash bench/gpu_wheels.sh              # then: run bench/gpu_check.sh with carry [".whl"]
#   PYVER=3.11 bash bench/gpu_wheels.sh   # wheels for this machine's python: a full CPU dry run
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
rm -rf .whl && mkdir -p .whl/project .whl/tl-4.3 .whl/nnsight-0.8
get() {
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d ".whl/$dir" "$@" 2>&1 | grep -v "^WARNING: Location" || true
}
get project \
  transformers==5.24.0 transformer-lens==3.9.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  beartype==0.23.1 typeguard==4.6.1 better-abc==0.0.3 fancy-einsum==0.0.3 \
  circuitsvis==1.43.3 importlib-metadata==10.2.0 \
  lazy-importer==0.1.0 plotly==7.1.0 regex==2026.11.19
get tl-4.3 transformer-lens==4.3.0
get nnsight-0.8 \
  nnsight==0.8.1 greenlet==3.5.6 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 zstandard==0.25.0
n=$(ls .whl/*/*.whl | wc -l)
[ "$n" -eq 22 ] || { echo "error: expected 22 wheels, got $n" >&2; exit 1; }
du -sh .whl/* && du -sh .whl
