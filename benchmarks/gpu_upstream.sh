#!/usr/bin/env bash
# The upstream-lines preset at upstream's width (n_filters_scale 2) on one CUDA GPU: the run that
# settles what 2 CPU cores cannot (issue 11). About 10 min of training per gridsize on one modern GPU.
#   bash benchmarks/gpu_upstream.sh [BUDGET_MINUTES]     (default 10)
# Writes benchmarks/results/quality_upstream_lines.json and the docs/benchmarks.md section.
set -euo pipefail
cd "$(dirname "$0")"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
PY=${PYTHON:-../.venv/bin/python}
exec "$PY" quality.py --preset upstream-lines --n-filters-scale 2 --batch-size 16 \
    --budget-minutes "${1:-10}" --gridsizes 1 2
