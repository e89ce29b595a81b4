#!/usr/bin/env bash
# `make bench-gpu`: fp16 AMP vs fp32 vs bf16 on gf-12L-38M-i4096's shape, plus data parallel over every
# visible GPU (bench/gpu.py). Made for a bare GPU host: any python3 that imports torch and transformers
# runs it from the repository's files alone; elsewhere the runner venv does. Arguments go to bench/gpu.py.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
if python3 -c 'import torch, transformers' 2>/dev/null; then
    py=python3
else
    ensure_venv runner "$REPO_ROOT/requirements/runner.lock"
    py="$REPO_ROOT/.venv-runner/bin/python"
fi
exec "$py" -m bench.gpu "$@"
