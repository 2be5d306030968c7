#!/usr/bin/env bash
# Run every benchmark, then rebuild bench/results/performance.md.
#
# On the 2-core development CPU this takes about 45-60 minutes when the machine is otherwise
# idle (peers ~10 min, pruning ~25-40 min of which the first run spends ~10 min exporting
# ONNX graphs into /tmp/mobius-bench-exports, budget curve ~5-10 min); it is much longer on a
# loaded machine. Peer packages: see bench/requirements.txt. Nothing is downloaded.
#
# Usage: bench/run_all.sh [--quick]   (--quick: fewer repeats/frames, for checking the scripts)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1
REPEATS=10; FRAMES=40; SETTLE=10
if [[ "${1:-}" == "--quick" ]]; then REPEATS=3; FRAMES=16; SETTLE=6; fi

start=$(date +%s)
$PY -m bench.runtime_peers --repeats "$(( REPEATS * 3 ))"
$PY -m bench.peers --repeats "$REPEATS"
$PY -m bench.pruning --repeats "$REPEATS"
$PY -m bench.budget_curve --frames "$FRAMES" --settle "$SETTLE"
$PY -m bench.node_memory
$PY -m bench.report
echo "bench/run_all.sh: done in $(( ($(date +%s) - start) / 60 )) min"
