#!/usr/bin/env bash
# The Airflow side's tests: DAG parsing, forms, profile -> container mapping, ledger, compose files
# (Airflow venv from requirements/airflow.lock; no servers needed, S3 is moto in-process).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
run_pytest .venv-airflow/bin/python airflow tests/airflow "$@"
