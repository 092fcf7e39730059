#!/usr/bin/env bash
# Prepare the GPU benchmark for a lent GPU machine that has PyTorch but no package registry:
# download (here) the wheels it lacks into .whl/ (git-ignored, about 58 MB with pytest for
# benchmarks/gpu_check.sh, which installs them itself), then run there:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
#   HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu --json "$OUT/gpu.json" 2>&1 |
#       tee "$OUT/gpu.log"
#
# (carry .whl; the machine's Python is 3.12; it has torch, sentencepiece, safetensors,
# huggingface-hub and tokenizers already.) On an ordinary GPU box, `make bench-gpu` is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    bitsandbytes==0.50.2 transformers==5.24.0 pydantic==2.14.4 pydantic-core==2.50.5 \
    pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 \
    pydantic-settings==2.16.3 python-dotenv annotated-types typing-inspection aiosqlite==0.22.1
du -sh .whl
