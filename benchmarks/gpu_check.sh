#!/usr/bin/env bash
# Issue 30's whole GPU check in one run, for a lent CUDA machine (GPU time is short: run it
# once, with a timeout that leaves room for one rerun):
#   1. tests/test_decode_graphs_gpu.py: captured vs eager bitwise, greedy vs the card's generate
#      (real shape, random weights, fp16 and NF4);
#   2. benchmarks.gpu_graphs: eager vs captured side by side, ranked cases under BUDGET_S.
# The random weights are written once (~7 GB, under $WEIGHTS) and shared by both.
#
#   OUT=/some/dir benchmarks/gpu_check.sh        (results: $OUT/gpu-test.log, gpu-graphs.json,
#                                                  gpu-graphs.log, gpu-graphs.profile-*.txt)
#
# The machine needs torch with CUDA. What it lacks comes from .whl/ (benchmarks/gpu_wheels.sh
# downloads it beforehand, about 58 MB: carry it) or, on an ordinary GPU box, from
# `make .venv/.installed` (PY=.venv/bin/python). Knobs: PY, OUT, WEIGHTS, BUDGET_S (the
# benchmark's case budget, default 200 s), TEST_TIMEOUT_S (default 240), BENCH_TIMEOUT_S
# (default 330). DRY_RUN=1 runs both on the CPU with a small shape: it checks this script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/rinna-gpu-check}
WEIGHTS=${WEIGHTS:-/tmp/rinna-gpu-weights}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/rinna-site .whl/*.whl >"$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
    export PYTHONPATH=/tmp/rinna-site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 RINNA_GPU_WEIGHTS=$WEIGHTS
bench_args=(--json "$OUT/gpu-graphs.json" --weights "$WEIGHTS" --budget-s "${BUDGET_S:-200}")
if [ "${DRY_RUN:-0}" = 1 ]; then
    export RINNA_GPU_DRY_RUN=1
    bench_args+=(--device cpu --tiny --max-new 8 --repeats 1)
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, transformers, bitsandbytes, pytest; print('torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| transformers',
transformers.__version__, '| bitsandbytes', bitsandbytes.__version__)" | tee "$OUT/versions.txt"
started=$(date +%s)
# --noconftest: the suite's conftest needs the platform libraries; this test needs none of it
timeout "${TEST_TIMEOUT_S:-240}" "$PY" -m pytest -q -x -s --noconftest -p no:cacheprovider \
    tests/test_decode_graphs_gpu.py 2>&1 | tee "$OUT/gpu-test.log"
test_rc=${PIPESTATUS[0]}
echo "gpu test: exit $test_rc after $(( $(date +%s) - started )) s" | tee -a "$OUT/gpu-test.log"
timeout "${BENCH_TIMEOUT_S:-330}" "$PY" -m benchmarks.gpu_graphs "${bench_args[@]}" 2>&1 |
    grep -v "Loading weights\|Writing model" | tee "$OUT/gpu-graphs.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu check: test exit $test_rc, benchmark exit $bench_rc, $(( $(date +%s) - started )) s"
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ]
