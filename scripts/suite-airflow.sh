#!/usr/bin/env bash
# The Airflow side's tests: DAG parsing, forms, profile -> container mapping, ledger, compose files
# (Airflow venv from requirements/airflow.lock; S3 is moto in-process; the registry tests start a real
# MLflow server from its own venv).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
ensure_mlflow_env
run_pytest .venv-airflow/bin/python airflow tests/airflow "$@"
