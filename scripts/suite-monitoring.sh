#!/usr/bin/env bash
# The monitoring tests (runner venv): promtool on the rules, the StatsD mapping against real Airflow packets,
# dashboards against a real Prometheus + Pushgateway + node-exporter (Debian), a real runner run pushing metrics.
# The Airflow venv provides a live Airflow for the slow StatsD capture and check-jsonschema for the compose file.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_apt prometheus prometheus-pushgateway prometheus-node-exporter
ensure_runner_env
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
run_pytest .venv-runner/bin/python monitoring tests/monitoring "$@"
