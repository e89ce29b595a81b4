#!/usr/bin/env bash
# Build the compose stack's images on this machine, where no registry is reachable, from the local Debian
# base (scripts/docker-base-image.sh); cheaply when nothing changed. Used by `make stack` (scripts/stack.sh).
#
#   scripts/build-local-images.sh [NAME...]     build (default: every image below); prints the tags
#   scripts/build-local-images.sh --env         print the .env lines that point the compose files at them
#   scripts/build-local-images.sh --list        print "name variable tag" rows (one per compose variable)
#
#   name           tag                                 compose variable(s)          from
#   airflow        helical-airflow:3.3.2               AIRFLOW_IMAGE_NAME           docker/Dockerfile.airflow
#   postgres       helical-local/postgres:15           POSTGRES_IMAGE               Debian postgresql-15
#   redis          helical-local/redis:7.0             REDIS_IMAGE                  Debian redis-server
#   haproxy        helical-local/haproxy:2.6           SOCKET_PROXY_IMAGE           Debian haproxy
#   prometheus     helical-local/prometheus:2.42       PROMETHEUS_IMAGE             Debian prometheus
#   pushgateway    helical-local/pushgateway:1.5       PUSHGATEWAY_IMAGE            Debian prometheus-pushgateway
#   node-exporter  helical-local/node-exporter:1.5     NODE_EXPORTER_IMAGE          Debian prometheus-node-exporter
#   janitor        helical-local/janitor:py3.12        JANITOR_IMAGE                the base + `python`
#   statsd-exporter helical-local/statsd-exporter:py   STATSD_EXPORTER_IMAGE        monitoring/statsd/statsd_exporter.py
#   s3             helical-local/s3-moto:5.2.5         MINIO_IMAGE, MINIO_MC_IMAGE  moto's S3 server (MinIO stand-in)
#   mlflow         helical-local/mlflow:3.17.2         MLFLOW_IMAGE                 PyPI's mlflow (requirements/mlflow.lock)
# The others are docker/local/<name>.Dockerfile. cAdvisor and Grafana have no build here (no Debian
# package, no registry): docker-compose-local.yaml leaves them out.
#
# Like scripts/build-runner-image.sh: legacy builder with --network host (apt and pip reach their indexes
# through the host; ENVIRONMENT.md), a build context of only the files the Dockerfile copies, and no build
# at all when the tag carries the hash of its inputs (label io.helical-airflow.build-hash).
# Settings (environment): HELICAL_FORCE_BUILD=1.
source "$(dirname "$0")/lib.sh"

declare -A TAG=(
    [airflow]=helical-airflow:3.3.2
    [postgres]=helical-local/postgres:15
    [redis]=helical-local/redis:7.0
    [haproxy]=helical-local/haproxy:2.6
    [prometheus]=helical-local/prometheus:2.42
    [pushgateway]=helical-local/pushgateway:1.5
    [node-exporter]=helical-local/node-exporter:1.5
    [janitor]=helical-local/janitor:py3.12
    [s3]=helical-local/s3-moto:5.2.5
    [statsd-exporter]=helical-local/statsd-exporter:py
    [mlflow]=helical-local/mlflow:3.17.2
)
declare -A VARS=(
    [airflow]=AIRFLOW_IMAGE_NAME [postgres]=POSTGRES_IMAGE [redis]=REDIS_IMAGE [haproxy]=SOCKET_PROXY_IMAGE
    [prometheus]=PROMETHEUS_IMAGE [pushgateway]=PUSHGATEWAY_IMAGE [node-exporter]=NODE_EXPORTER_IMAGE
    [janitor]=JANITOR_IMAGE [s3]="MINIO_IMAGE MINIO_MC_IMAGE" [statsd-exporter]=STATSD_EXPORTER_IMAGE
    [mlflow]=MLFLOW_IMAGE
)
ORDER=(postgres redis haproxy prometheus pushgateway node-exporter janitor s3 statsd-exporter mlflow airflow)

if [ "${1:-}" = --env ] || [ "${1:-}" = --list ]; then
    for name in "${ORDER[@]}"; do
        for var in ${VARS[$name]}; do
            [ "$1" = --env ] && echo "$var=${TAG[$name]}" || echo "$name $var ${TAG[$name]}"
        done
    done
    exit 0
fi

# dockerfile_of NAME, context_of NAME: the Dockerfile and every file it copies (relative to the repo).
dockerfile_of() { [ "$1" = airflow ] && echo docker/Dockerfile.airflow || echo "docker/local/$1.Dockerfile"; }
context_of() {
    local files=("$(dockerfile_of "$1")" docker/local/apt-install.sh)
    case $1 in
        airflow) files+=(requirements/airflow.lock docker/airflow dags config) ;;
        postgres) files+=(docker/local/postgres-entrypoint.sh) ;;
        s3) files+=(requirements/runner.lock docker/local/s3-init.py) ;;
        statsd-exporter) files+=(monitoring/statsd/statsd_exporter.py) ;;
        mlflow) files+=(requirements/mlflow.lock) ;;
    esac
    printf '%s\n' "${files[@]}"
}

use_engine  # DOCKER_HOST's engine (a worker host's), else this machine's
BASE=$(bash "$REPO_ROOT/scripts/docker-base-image.sh")
cd "$REPO_ROOT"

build() {
    local name=$1 tag=${TAG[$1]} dockerfile context hash
    dockerfile=$(dockerfile_of "$name")
    mapfile -t context < <(context_of "$name")
    hash=$( { printf '%s\n' "$name" "$(docker image inspect -f '{{.Id}}' "$BASE")";
              find "${context[@]}" scripts/build-local-images.sh -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
                  | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-16)
    if [ "${HELICAL_FORCE_BUILD:-0}" != 1 ] && \
       [ "$(docker image inspect -f '{{index .Config.Labels "io.helical-airflow.build-hash"}}' "$tag" 2>/dev/null)" = "$hash" ]; then
        log "$tag is up to date (build hash $hash)"
        return 0
    fi
    log "building $tag from $dockerfile (base $BASE, build hash $hash)"
    local start=$SECONDS logfile=$CACHE_ROOT/build-local-$name.log
    tar -c --exclude=__pycache__ --exclude='*.pyc' "${context[@]}" \
        | DOCKER_BUILDKIT=0 docker build --network host -t "$tag" -f "$dockerfile" \
            --build-arg "BASE_IMAGE=$BASE" --label "io.helical-airflow.build-hash=$hash" - >"$logfile" 2>&1 \
        || { tail -n 30 "$logfile" >&2; die "building $tag failed; see $logfile"; }
    log "built $tag in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec))"
}

# One builder at a time (two `make stack` at once would build the same layers twice).
exec 9>"$CACHE_ROOT/build-local-images.lock"
flock 9
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
for name in "${names[@]}"; do
    [ -n "${TAG[$name]:-}" ] || die "unknown image '$name' (one of: ${ORDER[*]})"
    build "$name"
done
# earlier builds of these tags are left dangling: drop them (the new images keep their layer cache)
docker image prune -f --filter "label=io.helical-airflow.build-hash" >/dev/null 2>&1 || true
for name in "${names[@]}"; do echo "${TAG[$name]}"; done
