#!/usr/bin/env bash
# The stack test (tests/stack): `make stack` brings the compose files up on this machine's engine with
# the images built here, and real clients drive it: the AWS CLI, Airflow's REST API, Prometheus's HTTP API,
# the docker CLI and headless Chromium (Debian's, through Playwright); then `make stack-down`. Runs from the
# clients venv (no Airflow in it); the tiny model and the cells are written with the runner venv's code.
#
# All its tests are slow: with -m "not slow" (make test-fast) the suite is skipped without starting anything.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

case " $* " in *"not slow"*) log "stack: every test is slow; skipped by the marker expression"; exit 0 ;; esac

ensure_apt docker-compose chromium
ensure_clients_env
ensure_venv runner "$REPO_ROOT/requirements/runner.lock"  # helical_runner.data.synthetic from this clone (PYTHONPATH)
DOCKER_HOST=unix://$(bash scripts/docker-engine.sh)
export DOCKER_HOST
VIRTUAL_ENV=$REPO_ROOT/.venv-clients run_pytest .venv-clients/bin/python stack tests/stack "$@"
