#!/usr/bin/env bash
# Issue 3's benchmark: upload -> runner started, beside a default S3KeySensor; DAG parse time.
# Runner steps run as local processes unless HELICAL_E2E_MODE=docker (see bench/airflow_pickup.py).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_apt postgresql-15 redis-server
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
ensure_runner_env
exec .venv-airflow/bin/python bench/airflow_pickup.py "$@"
