#!/usr/bin/env bash
# The runner's unit and integration tests (runner venv; moto S3 server, Pushgateway and an MLflow server
# from its own venv started by the tests).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_apt prometheus-pushgateway
ensure_runner_env
ensure_mlflow_env
run_pytest .venv-runner/bin/python runner tests/runner "$@"
