#!/usr/bin/env bash
# One GPU benchmark run (issue 25): every model at full size, random weights, one JSON.
# Usage: scripts/gpu-bench.sh [OUT.json]   (default gpu-bench.json; budget about 8 minutes on one H100/H200)
# Without a CUDA GPU it prints one line and exits 0. See scripts/gpu_bench.py for what it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python scripts/gpu_bench.py "$@"
