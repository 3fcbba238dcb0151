#!/usr/bin/env bash
# Download, here, the wheels a GPU machine of the device tool lacks for bench/gpu_check.sh, into
# .whl/ (ignored by git; carried to the machine with `carry: [".whl"]`).
#
# The machine's image (/work/.library/device/KINDS.md) has Python 3.12, torch, accelerate,
# huggingface-hub 1.33, tokenizers 0.23, safetensors, numpy, pandas, pyarrow, rich, einops,
# jaxtyping, sentencepiece, narwhals, tqdm, typer, ... and transformers 5.17. What it lacks, at
# the versions this repo's tests run (.venv): transformers 5.24 (the version logitscope is tested
# with), TransformerLens 3.9 and what it imports (datasets, dill, multiprocess, beartype, typeguard,
# better-abc, fancy-einsum; not transformers-stream-generator, an sdist TransformerLens
# declares but never imports), circuitsvis (importlib-metadata,
# lazy-importer) and plotly; and regex (transformers 5.24 will not import with a regex older than
# 2025.10.22, and the image's version is unknown). All but regex are pure Python; ~29 MB together.
#
#   bash bench/gpu_wheels.sh            # then: run bench/gpu_check.sh with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  transformers==5.24.0 transformer-lens==3.9.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  beartype==0.23.1 typeguard==4.6.1 better-abc==0.0.3 fancy-einsum==0.0.3 \
  circuitsvis==1.43.3 importlib-metadata==10.2.0 \
  lazy-importer==0.1.0 plotly==7.1.0 regex==2026.11.19
du -sh .whl
ls .whl
