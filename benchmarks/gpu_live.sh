#!/usr/bin/env bash
# Live reconstruction on one GPU, sized for one device command under 10 minutes: the rate a GPU sustains
# at N=64 and N=128 (the number beamlines ask for), local loop on CUDA and 1 Ray actor with the GPU, the
# writer as fast as it can and at 500 Hz. Writes benchmarks/results/live_gpu_N64.json and _N128.json (no
# docs rewrite: copy the numbers by hand with the command). Runs on an image with torch + lightning + ray.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device: this script is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
cd benchmarks
for N in 64 128; do
    python live.py --N "$N" --positions 4096 --hz 500 --device cuda --gpus-per-actor 1 --engines local ray1 \
        --no-docs --out "results/live_gpu_N$N.json" "$@"
done
