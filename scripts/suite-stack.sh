#!/usr/bin/env bash
# The stack test (tests/stack): `make stack` brings the compose files up on this machine's engine with
# the images built here, and real clients drive it: the AWS CLI, Airflow's REST API, Prometheus's HTTP API,
# the docker CLI and headless Chromium (Debian's, through Playwright); a worker host joins it from a second
# Docker engine; then `make stack-down`. Runs from the clients venv (no Airflow in it); the tiny model and
# the cells are written with the runner venv's code.
#
# All its tests are slow: with -m "not slow" (make test-fast) the suite is skipped without starting anything.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

case " $* " in *"not slow"*) log "stack: every test is slow; skipped by the marker expression"; exit 0 ;; esac

ensure_apt docker-compose chromium iptables  # iptables: test_worker_host.py cuts the second host's S3
ensure_clients_env
ensure_venv runner "$REPO_ROOT/requirements/runner.lock"  # helical_runner.data.synthetic from this clone (PYTHONPATH)
DOCKER_HOST=unix://$(bash scripts/docker-engine.sh)
export DOCKER_HOST

# Two hosts: this machine is the central host, and a second one in its own network namespace
# (scripts/second-host.sh: 10.203.0.2, its own Docker engine) joins as a worker host serving queue cpu-remote
# (tests/stack/test_worker_host.py). The stack publishes its ports on this machine's end of the veth, as a
# central host publishes on its LAN address, and lists the second host for Prometheus: the environment wins
# over .env for docker-compose, and .env is left as make stack wrote it. A lost worker is noticed after 60 s.
HELICAL_H2_SOCKET=$(bash scripts/second-host.sh up)
# The runner image (8.5 GB: about 3 minutes to copy) is already built here (make demo, the e2e suite):
# copied to the second host while `make stack` builds and starts the rest; the worker host's fixture loads
# every image it needs after it (a load waits for the one under way, and skips images already there by ID).
if docker image inspect helical-runner:cpu >/dev/null 2>&1; then
    mkdir -p build/stack
    bash scripts/second-host.sh load helical-runner:cpu >build/stack/second-host-prefetch.log 2>&1 &
fi
[ "${HELICAL_STACK_KEEP:-}" = 1 ] || trap 'wait; bash scripts/second-host.sh down' EXIT
export HELICAL_H2_SOCKET HELICAL_BIND_ADDRESS=10.203.0.1 HELICAL_WORKER_HOSTS=h2=10.203.0.2 \
    AIRFLOW_TASK_HEARTBEAT_TIMEOUT=60

VIRTUAL_ENV=$REPO_ROOT/.venv-clients run_pytest .venv-clients/bin/python stack tests/stack "$@"
