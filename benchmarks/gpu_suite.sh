#!/usr/bin/env bash
# The prepared accelerator run (benchmarks/gpu_suite.py): every GPU figure in <= 8 min.
#   bash benchmarks/gpu_suite.sh [--out=DIR] [--budget_s=480] [--smoke]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_suite.py "$@"
