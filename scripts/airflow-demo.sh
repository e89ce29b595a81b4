#!/usr/bin/env bash
# `make demo`: the main job through Airflow, on this machine, with nothing installed by hand: a private
# Airflow (Celery; Postgres, redis, moto's S3 and MLflow's tracking server on free ports:
# scripts/local_stack.py), a tiny random Geneformer and synthetic cells (scripts/airflow_demo.py). A labelled
# .h5ad is uploaded to incoming/ and fine-tuned (tracked in MLflow, registered, champion), then unlabelled
# cells are uploaded and annotated with the champion; outputs are copied to data/demo/runs/<run_id>/.
#
# Runner steps run in helical-runner:cpu containers through the socket proxy, as in the product: the Docker
# engine is started the way the tests start it (scripts/docker-engine.sh) and the runner image is built if
# needed. HELICAL_DEMO_MODE=local runs them as local processes of the runner venv instead; so does a machine
# where no engine can start, and the demo says why in one line. HELICAL_DEMO_MODE=docker makes a missing
# engine an error. HELICAL_DEMO_CELLS (default 2000: enough for the runner's default one epoch at lr 1e-4 to
# learn the tiny model's cell types) sets the data size.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_apt postgresql-15 redis-server

mode=${HELICAL_DEMO_MODE:-}
case $mode in ""|docker|local) ;; *) die "HELICAL_DEMO_MODE must be docker or local, not '$mode'" ;; esac
if [ "$mode" != local ]; then
    engine_log=$(mktemp)
    if socket=$(bash scripts/docker-engine.sh 2>"$engine_log"); then
        mode=docker
    else
        reason=$(grep -v '^\[' "$engine_log" | tail -n 1)
        [ "$mode" = docker ] && { cat "$engine_log" >&2; die "HELICAL_DEMO_MODE=docker but no Docker engine could start: $reason"; }
        mode=local
        log "demo: no Docker engine could start ($reason): runner steps run as local processes instead"
    fi
    rm -f "$engine_log"
fi
export HELICAL_DEMO_MODE=$mode HELICAL_DEMO_ENGINE=""
image_pid=""
if [ "$mode" = docker ]; then
    ensure_apt haproxy debootstrap
    # built beside the virtualenvs below (on a first run each takes minutes, neither keeps both CPUs busy);
    # its messages go to this output as they come
    log "demo: building the runner image if needed (first run on this machine: several minutes)"
    DOCKER_HOST=unix://$socket bash scripts/build-runner-image.sh cpu >/dev/null &  # on the engine the demo uses
    image_pid=$!
fi
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
ensure_runner_env
ensure_mlflow_env
if [ "$mode" = docker ]; then
    wait "$image_pid" || die "the runner image could not be built (its error is above)"
    export HELICAL_DEMO_ENGINE=$socket
    log "demo: runner steps run in helical-runner:cpu containers on network helical-local-runners, through the socket proxy"
else
    log "demo: runner steps run as local processes (.venv-runner/bin/helical-runner)"
fi

.venv-airflow/bin/python scripts/airflow_demo.py "$@"
