#!/usr/bin/env bash
# Issue 15's generalization table on one CUDA GPU: the speed ratio that 2 CPU cores cannot settle
# (network pass vs our gradient descent vs Pty-chi, all on the GPU). Sized for one device command of
# under 10 minutes: pretraining 3 min, fine-tuning 0.5, from scratch 2, each solver 30 s.
#   bash benchmarks/gpu_generalize.sh [PRETRAIN_MINUTES] [more generalize.py flags, e.g. --batch-size 16]
# Writes benchmarks/results/generalize_gpu.json and the docs/benchmarks.md section "... on a GPU"
# (the CPU table keeps its own). PYTHON picks the interpreter (default ../.venv/bin/python); the repo
# root goes on PYTHONPATH, so an image that has torch + lightning needs no install. Pty-chi rows need
# ptychi importable there; on a machine without a package index, carry wheels in .whl/ (ptychi and what
# the image lacks: pydantic, pydantic-core, annotated-types, typing-inspection) and they are installed
# under /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
if compgen -G "../.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
exec "$PY" generalize.py --device cuda --n-scans 24 --pretrain-minutes "${1:-3}" --finetune-minutes 0.5 \
    --scratch-minutes 2 --iterative-seconds 30 --refine-seconds 5 "${@:2}"
