#!/usr/bin/env bash
# `make worker-host` / `make worker-host-down`: this machine as a worker host of a running stack
# (docker-compose-worker.yaml, README "Worker hosts"), with Debian's docker-compose 1.29 and local images
# as `make stack` builds them.
#
#   scripts/worker-host.sh up      check .env, check that the central host answers, build what is missing
#                                  (the worker's images, the runner images of its queues' profiles),
#                                  up -d, wait for every healthcheck
#   scripts/worker-host.sh down    remove this worker host's containers (and runner containers it kept)
#   scripts/worker-host.sh compose ARGS...   docker-compose with the worker host's files
#
# .env (HELICAL_WORKER_ENV to use another file) is the central host's .env, copied here, with
# HELICAL_CENTRAL_HOST, HELICAL_WORKER_NAME, HELICAL_WORKER_QUEUES, HELICAL_WORKER_BIND_ADDRESS and this
# host's own HELICAL_DATA_DIR set. The central host runs with HELICAL_WORKER_HOSTS naming this one.
#
# Settings (environment): HELICAL_WORKER_ENV (default ./.env), HELICAL_WORKER_PROJECT (compose project,
# default helical-worker), DOCKER_HOST (this host's engine; default: the one scripts/docker-engine.sh starts),
# HELICAL_STACK_WAIT (seconds to wait for health, default 600).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ENV_FILE=${HELICAL_WORKER_ENV:-$REPO_ROOT/.env}
PROJECT=${HELICAL_WORKER_PROJECT:-helical-worker}
FILES=(docker-compose-worker.yaml docker-compose-worker-local.yaml)
WAIT=${HELICAL_STACK_WAIT:-600}

compose() { docker-compose --project-name "$PROJECT" --project-directory "$REPO_ROOT" --env-file "$ENV_FILE" "${FILES[@]/#/-f}" "$@"; }
env_value() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -n1; }
port_of() { local value; value=$(env_value "$1"); echo "${value:-$2}"; }

# check_env: the variables a worker host needs, each missing one named in one line
check_env() {
    [ -f "$ENV_FILE" ] || die "no $ENV_FILE: copy the central host's .env here and set the worker host's variables (README \"Worker hosts\")"
    local name
    for name in HELICAL_CENTRAL_HOST HELICAL_WORKER_NAME HELICAL_WORKER_QUEUES HELICAL_WORKER_BIND_ADDRESS HELICAL_DATA_DIR \
                POSTGRES_PASSWORD REDIS_PASSWORD AIRFLOW_JWT_SECRET HELICAL_S3_ACCESS_KEY HELICAL_RUNNER_S3_ACCESS_KEY; do
        [ -n "$(env_value "$name")" ] || die "$ENV_FILE sets no $name (.env-template, section \"worker hosts\", says what it is)"
    done
    case "$(env_value HELICAL_DATA_DIR)" in /*) ;; *) die "HELICAL_DATA_DIR in $ENV_FILE must be an absolute path on this host" ;; esac
}

# check_central: every central service this host reaches answers on its port, before anything starts
check_central() {
    local host port what
    host=$(env_value HELICAL_CENTRAL_HOST)
    while read -r port what; do
        python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()' "$host" "$port" 2>/dev/null \
            || die "the central host $host does not answer on port $port ($what): is its stack up with HELICAL_WORKER_HOSTS naming this host (docker-compose-central.yaml), and does its firewall let this host in?"
    done <<PORTS
$(port_of REDIS_PORT 6379) Redis, the Celery broker
$(port_of POSTGRES_PORT 5432) Postgres, Celery's result backend
$(port_of AIRFLOW_API_PORT 8080) the Airflow API
$(port_of MINIO_API_PORT 9000) S3
$(port_of PUSHGATEWAY_PORT 9091) the Pushgateway
$(port_of MLFLOW_PORT 5000) MLflow
PORTS
    # MLflow answers only the Host names in its --allowed-hosts (403 otherwise, /health excepted): this host's
    # runners address it as HELICAL_CENTRAL_HOST:MLFLOW_PORT
    local mlflow="$host:$(port_of MLFLOW_PORT 5000)" code
    code=$(python3 - "http://$mlflow/api/2.0/mlflow/experiments/search?max_results=1" <<'PY'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("unreachable")
PY
)
    [ "$code" != 403 ] || die "MLflow at http://$mlflow refuses requests addressed to $mlflow (403: not one of its allowed hosts): add $mlflow to MLFLOW_ALLOWED_HOSTS in the central host's .env, then restart its mlflow service"
}

# build_worker_images: on this host's engine, the local images the worker file runs (those .env names by their
# local tags) and the runner image of each profile on this host's queues (helical_lib.profiles, in the Airflow
# image: the DAGs' own reading of config/profiles.yaml); each only when missing or out of date
build_worker_images() {
    local flavours flavour
    build_stack_images AIRFLOW_IMAGE_NAME SOCKET_PROXY_IMAGE NODE_EXPORTER_IMAGE
    flavours=$(docker run --rm --network none --entrypoint python -e HELICAL_PROFILES=/config/profiles.yaml \
        -v "$REPO_ROOT/config:/config:ro" "$(env_value AIRFLOW_IMAGE_NAME)" -c '
import sys
from helical_lib import profiles
queues = set(sys.argv[1].split(","))
print(" ".join(sorted({p["image"].rpartition(":")[2] for p in profiles.load_all()[1].values() if p["queue"] in queues})))
' "$(env_value HELICAL_WORKER_QUEUES)") || die "could not read config/profiles.yaml's runner images for queues $(env_value HELICAL_WORKER_QUEUES)"
    [ -n "$flavours" ] || die "no profile in config/profiles.yaml runs on queue(s) $(env_value HELICAL_WORKER_QUEUES): this host would take no work (HELICAL_WORKER_QUEUES names profiles' queues)"
    for flavour in $flavours; do
        bash scripts/build-runner-image.sh "$flavour" >/dev/null
    done
}

# this host's engine (DOCKER_HOST, else the one scripts/docker-engine.sh starts) and docker-compose
engine_and_compose() {
    ensure_apt docker-compose
    use_engine
}

case ${1:-} in
    up)
        start=$SECONDS
        check_env
        check_central
        engine_and_compose
        build_worker_images
        log "starting worker host $(env_value HELICAL_WORKER_NAME) for queue(s) $(env_value HELICAL_WORKER_QUEUES) (central host $(env_value HELICAL_CENTRAL_HOST))"
        compose_up worker-host
        wait_healthy "$WAIT"
        log "worker host $(env_value HELICAL_WORKER_NAME) is up and healthy in $((SECONDS - start))s"
        ;;
    down)
        [ -f "$ENV_FILE" ] || die "no $ENV_FILE: nothing was started by make worker-host here"
        engine_and_compose
        compose_down worker-host
        log "worker host $(env_value HELICAL_WORKER_NAME) is down"
        ;;
    compose) shift; engine_and_compose; compose "$@" ;;
    *) die "usage: $0 up|down|compose ARGS..." ;;
esac
