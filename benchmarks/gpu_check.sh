#!/usr/bin/env bash
# GPU check, sized for a short lease (under 5 minutes with an existing environment):
#   1. finds a Python with the project's dependencies (.venv, else a system python3 that has torch,
#      else `make setup`, which needs network access and a few minutes for torch's wheels);
#   2. checks that torch sees a CUDA device, and stops with a clear message when it does not;
#   3. trains ResNet18 and ResNet50 for a few steps at 224 and 512 px through the project's training
#      path and prints images/s and peak GPU memory (torch.cuda.max_memory_allocated);
#   4. repeats ResNet18 at 224 px with torch.compile (the `compile` param);
#   5. runs one epoch of the train stage's code on a small generated set at 224 px on the GPU.
#
#   bash benchmarks/gpu_check.sh           # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu     # no GPU: the same steps, tiny, on the CPU (plumbing only)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

has_deps() { "$1" -c "import torch, torchvision, pandas, sklearn, PIL, yaml, tqdm, matplotlib" 2>/dev/null; }
if [[ -x .venv/bin/python ]] && has_deps .venv/bin/python; then
    PY=.venv/bin/python
elif command -v python3 >/dev/null && has_deps python3; then
    PY=python3
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "== no Python with torch found: make setup (needs network)"
    make setup
    PY=.venv/bin/python
fi
"$PY" -c "import retinopathy" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
echo "== python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)'))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [[ "${1:-}" == "--cpu" ]]; then
    echo "== --cpu: checking the script's plumbing on the CPU at 32 px (figures mean nothing)"
    "$PY" benchmarks/train_speed.py --device cpu --sizes 32 --batch 8 --steps 1 --warmup 1
    TQDM_DISABLE=1 "$PY" benchmarks/train_speed.py --device cpu --archs resnet18 --sizes 32 --batch 8 --steps 0 --stage 32
    exit 0
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False)." >&2
    echo "  Run this on a machine with an NVIDIA GPU and a CUDA build of torch, or use --cpu to check the script." >&2
    exit 2
fi

start=$SECONDS
echo "== training throughput, batch 64 at 224 px and 32 at 512 px (bf16 autocast where supported)"
timeout 80 "$PY" benchmarks/train_speed.py --device cuda --sizes 224 --batch 64 --steps 30 --warmup 10
timeout 80 "$PY" benchmarks/train_speed.py --device cuda --sizes 512 --batch 32 --steps 20 --warmup 5
echo "== torch.compile, ResNet18 at 224 px (the warm-up column includes compiling)"
timeout 90 "$PY" benchmarks/train_speed.py --device cuda --archs resnet18 --sizes 224 --batch 64 --steps 30 --warmup 5 --compile \
    || echo "gpu_check: torch.compile run failed or timed out (the compile param stays off by default)"
echo "== train stage code, one epoch at 224 px on the GPU"
TQDM_DISABLE=1 timeout 60 "$PY" benchmarks/train_speed.py --device cuda --archs resnet18 --sizes 224 --batch 32 --steps 0 --stage 224
echo "== gpu_check done in $((SECONDS - start)) s after set-up"
