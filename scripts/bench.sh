#!/usr/bin/env bash
# `make bench`: the benchmarks of docs/BENCHMARKS.md, against helical's own loop, printed as one table.
# Arguments go to `python -m bench` (e.g. --size small, --only throughput,padding). Synthetic inputs are
# cached in ~/.cache/helical-airflow/bench-data/ (the 200k-cell file is ~3 GB); results in bench/results/.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_runner_env
exec "$REPO_ROOT/.venv-runner/bin/python" -m bench "$@"
