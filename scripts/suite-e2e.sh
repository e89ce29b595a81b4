#!/usr/bin/env bash
# End to end: a real Airflow (Celery; Postgres, redis and moto's S3 on private ports) runs the DAGs, whose
# runner steps go through the docker-socket-proxy (docker/socket-proxy/haproxy.cfg under Debian's haproxy)
# to this machine's Docker engine and the runner image built from docker/Dockerfile.runner.
#
#   HELICAL_E2E_MODE=docker (default)  the full path above: starts the engine, builds the image if needed
#   HELICAL_E2E_MODE=local             runner steps as local processes (no Docker), as `make demo` falls back to
#
# All its tests are slow: with -m "not slow" (make test-fast) the suite is skipped without starting anything.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

case " $* " in *"not slow"*) log "e2e: every test is slow; skipped by the marker expression"; exit 0 ;; esac

ensure_apt postgresql-15 redis-server haproxy prometheus-pushgateway
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
ensure_runner_env  # the tiny model and the synthetic cells are written with the runner's own code
ensure_mlflow_env  # the stack's MLflow tracking server

mode=${HELICAL_E2E_MODE:-docker}
export HELICAL_E2E_MODE=$mode
if [ "$mode" = docker ]; then
    socket=$(bash scripts/docker-engine.sh)
    DOCKER_HOST=unix://$socket bash scripts/build-runner-image.sh cpu >/dev/null
    # the stack (scripts/local_stack.py) starts the socket proxy and the runners' network itself
    export HELICAL_E2E_ENGINE=unix://$socket
    log "e2e: runner containers on network helical-local-runners, through the socket proxy, on the engine at $socket"
else
    log "e2e: runner steps as local processes (HELICAL_E2E_MODE=$mode)"
fi
run_pytest .venv-airflow/bin/python e2e tests/e2e "$@"
