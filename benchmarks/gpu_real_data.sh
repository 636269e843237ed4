#!/usr/bin/env bash
# The real-data benchmark on one GPU, sized for one device command under 10 minutes: our solver and
# the refinement on CUDA, the network at N=128 and upstream's width (n_filters_scale 2) trained for 4
# minutes with the retrieved probe. Needs the scan next to the repository (../shared/data/) or
# REAL_DATA=path. Writes benchmarks/results/real_data_gpu.json (no docs rewrite: copy the numbers by
# hand with the command). Runs on an image with torch + lightning without installing the package.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device: this script is for a GPU machine')"
DATA="$(realpath "${REAL_DATA:-../shared/data/velociprobe-siemens-star.npz.bz2}")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
cd benchmarks
python real_data.py --data "$DATA" --device cuda --seconds 30 --modes 3 --network-minutes 4 \
    --refine-seconds 10 --n-filters-scale 2 --no-docs --out results/real_data_gpu.json "$@"
