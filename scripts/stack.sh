#!/usr/bin/env bash
# `make stack` / `make stack-down`: the stack from the compose files on this machine, with Debian's
# docker-compose 1.29 and the images scripts/build-local-images.sh builds (no registry here).
#
#   scripts/stack.sh up      write .env if absent (or add what the template gained), build what is missing,
#                            up -d, wait for every healthcheck, print the URLs and the admin login
#   scripts/stack.sh down    remove the stack's containers (and runner containers left on its network),
#                            networks and volumes
#   scripts/stack.sh compose ARGS...   docker-compose with the stack's files, e.g. `compose ps`, `compose logs`
#
# .env (never committed) is written once from .env-template: fresh random secrets, HELICAL_DATA_DIR = the
# absolute path of ./data, the *_IMAGE variables pointing at the local images, and the template's host ports
# where they are free (free ones otherwise). An existing .env keeps every value it has: edit it to change a
# port, an image or a secret (a changed Postgres password needs `make stack-down` first: the volume keeps the
# old). Variables the template gained since it was written (e.g. MLflow's) are appended, made the same way.
#
# Settings (environment): HELICAL_STACK_WAIT (seconds to wait for health, default 600).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

PROJECT=helical-airflow
FILES=(docker-compose-storage.yaml docker-compose-monitoring.yaml docker-compose-airflow.yaml docker-compose-local.yaml)
WAIT=${HELICAL_STACK_WAIT:-600}

ensure_apt docker-compose
SOCKET=$(bash scripts/docker-engine.sh)
export DOCKER_HOST=unix://$SOCKET
compose() { docker-compose --project-name "$PROJECT" --project-directory "$REPO_ROOT" "${FILES[@]/#/-f}" "$@"; }
env_value() { sed -n "s/^$1=//p" .env | tail -n1; }
# a setting as docker-compose sees it: the environment's value wins over .env's
setting() { if [ -n "${!1+set}" ]; then echo "${!1}"; elif [ -f .env ]; then env_value "$1"; fi; }
# worker hosts listed in .env: the central host publishes what they reach and scrapes them (README "Worker hosts")
with_worker_hosts() {
    [ -n "$(setting HELICAL_WORKER_HOSTS)" ] || return 0
    case " ${FILES[*]} " in *" docker-compose-central.yaml "*) ;; *) FILES+=(docker-compose-central.yaml) ;; esac
}
with_worker_hosts

write_env() {
    # the template, with every <placeholder> filled, the data folder, local images and free ports; or, when
    # .env exists, only the template's variables it lacks, appended
    bash scripts/build-local-images.sh --env >"$CACHE_ROOT/stack-images.env"
    python3 - "$REPO_ROOT" "$CACHE_ROOT/stack-images.env" <<'PY'
import base64, os, re, secrets, socket, sys
from pathlib import Path

repo, images = Path(sys.argv[1]), dict(l.split("=", 1) for l in Path(sys.argv[2]).read_text().split())
PORTS = ("AIRFLOW_API_PORT", "MINIO_API_PORT", "MINIO_CONSOLE_PORT", "PROMETHEUS_PORT", "PUSHGATEWAY_PORT",
         "GRAFANA_PORT", "MLFLOW_PORT", "POSTGRES_PORT", "REDIS_PORT")

def free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0

def any_free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def secret(name):
    if name == "AIRFLOW_FERNET_KEY":  # a Fernet key is 32 random bytes, urlsafe base64
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    if name.endswith(("_USER", "_ACCESS_KEY")):
        return f"helical-{secrets.token_hex(4)}"
    return secrets.token_hex(24)

env = repo / ".env"
VARIABLE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
have = dict(m.groups() for m in map(VARIABLE.match, env.read_text().splitlines()) if m) if env.exists() else {}
values = dict(have)
out = ["# written by `make stack` (scripts/stack.sh) from .env-template: local images, fresh secrets"]
added = []
for line in (repo / ".env-template").read_text().splitlines():
    m = VARIABLE.match(line)
    if not m:
        out.append(line)
        continue
    name, value = m.groups()
    if name in have:
        continue
    if name == "HELICAL_DATA_DIR":
        value = str(repo / "data")
    elif name == "HELICAL_MLFLOW_UI_URL":  # the port MLflow got
        value = f"http://127.0.0.1:{values['MLFLOW_PORT']}"
    elif name in images:
        value = images[name]
    elif name in PORTS and not free(int(value)):
        value = str(any_free_port())
    elif value.startswith("<") and value.endswith(">"):
        value = secret(name)
    values[name] = value
    out.append(f"{name}={value}")
    added.append(f"{name}={value}")
if not have:
    env.write_text("\n".join(out) + "\n")
elif added:
    with env.open("a") as file:
        file.write("# added by `make stack` (scripts/stack.sh): variables .env-template gained since\n")
        file.write("\n".join(added) + "\n")
    print(" ".join(name.split("=", 1)[0] for name in added))
env.chmod(0o600)
PY
}

case ${1:-} in
    up)
        start=$SECONDS
        if [ -f .env ]; then
            added=$(write_env)
            [ -z "$added" ] || log "added to .env what .env-template gained: $added"
        else
            write_env
            log "wrote .env (fresh secrets, local images, data folder $REPO_ROOT/data)"
        fi
        mkdir -p data/scratch data/helical
        with_worker_hosts
        build_stack_images
        bash scripts/build-runner-image.sh cpu >/dev/null
        log "starting the stack (${FILES[*]})"
        compose_up stack
        wait_healthy "$WAIT"
        log "the stack is up and healthy in $((SECONDS - start))s"
        s3_port=$(env_value MINIO_API_PORT)
        address=$(setting HELICAL_BIND_ADDRESS)
        case ${address:=127.0.0.1} in 0.0.0.0) address=127.0.0.1 ;; esac  # every address: this machine's own
        cat <<MSG
Airflow UI and REST API  http://$address:$(env_value AIRFLOW_API_PORT)  (login $(env_value _AIRFLOW_WWW_USER_USERNAME) / $(env_value _AIRFLOW_WWW_USER_PASSWORD))
S3 (moto, MinIO's port)  http://$address:$s3_port  bucket $(env_value HELICAL_BUCKET); upload with
                         AWS_ACCESS_KEY_ID=$(env_value HELICAL_S3_ACCESS_KEY) AWS_SECRET_ACCESS_KEY=$(env_value HELICAL_S3_SECRET_KEY) \\
                         aws s3 cp cells.h5ad s3://$(env_value HELICAL_BUCKET)/incoming/ --endpoint-url http://$address:$s3_port
MLflow UI and REST API   $(env_value HELICAL_MLFLOW_UI_URL)  (runs in Postgres database mlflow, artifacts in s3://$(env_value HELICAL_BUCKET)/mlflow/)
Prometheus               http://$address:$(env_value PROMETHEUS_PORT)
Pushgateway              http://$address:$(env_value PUSHGATEWAY_PORT)
Data folder              $(env_value HELICAL_DATA_DIR)  (model cache in helical/, mounted at /data in runners)
Not run here (no registry, no Debian package): cAdvisor, Grafana (docker-compose-local.yaml)
MSG
        ;;
    down)
        [ -f .env ] || die "no .env: nothing was started by make stack here"
        compose_down stack
        log "the stack is down (containers, networks and volumes removed)"
        ;;
    compose) shift; compose "$@" ;;
    *) die "usage: $0 up|down|compose ARGS..." ;;
esac
