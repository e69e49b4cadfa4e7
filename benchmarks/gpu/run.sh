#!/usr/bin/env bash
# The GPU check in one command (docs/gpu.md):
#
#   bash benchmarks/gpu/run.sh OUT [--stages core|learn|data|all|name,...] [--budget 540] [--name suite]
#   bash benchmarks/gpu/run.sh OUT --stash-only      # only keep the wheel parts that came with this call
#   bash benchmarks/gpu/run.sh --dry-run OUT         # CPU: every command built, the CPU parts on tiny shapes
#
# Runs from the repository root whatever the current folder; results land in OUT/benchmarks/results.
# PYTHON picks the interpreter (default: python3, the one holding torch on the GPU image).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
if [ "$#" -eq 0 ]; then
    sed -n '2,8p' "$0"
    exit 2
fi
# Put OUT first for the suite's argument parser wherever it was given (after --dry-run, say).
ARGS=()
OUT=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run|--stash-only|--rerun|--*=*) ARGS+=("$1") ;;
        --*) ARGS+=("$1" "${2:-}"); shift ;;
        *) if [ -z "$OUT" ]; then OUT=$1; else ARGS+=("$1"); fi ;;
    esac
    shift
done
if [ -z "$OUT" ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUT [options]" >&2
    exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu.suite "$OUT" ${ARGS[@]+"${ARGS[@]}"}
