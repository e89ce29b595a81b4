#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, then print its unix socket path.
# Idempotent: installs Debian's docker.io only if dockerd is missing, starts dockerd only if nothing
# answers on the socket yet, and waits until `docker info` works. Needs root (or sudo) on a fresh machine.
#
# Settings (environment):
#   HELICAL_DOCKER_SOCKET     unix socket the engine listens on   (default /var/run/docker.sock)
#   HELICAL_DOCKER_DATA_ROOT  images, containers, layers          (default /var/lib/docker)
#   HELICAL_DOCKER_LOG        dockerd's log file                  (default $CACHE_ROOT/dockerd.log)
#   HELICAL_DOCKER_WAIT       seconds to wait for the engine      (default 60)
#
# Why these dockerd flags (ENVIRONMENT.md): overlay2 starts containers in 0.25 s where vfs copies whole
# images; these machines can't manage iptables, so there is no default bridge: containers use
# `--network host`, `--network none` or a user-defined network.
source "$(dirname "$0")/lib.sh"

SOCKET=${HELICAL_DOCKER_SOCKET:-/var/run/docker.sock}
DATA_ROOT=${HELICAL_DOCKER_DATA_ROOT:-/var/lib/docker}
LOG_FILE=${HELICAL_DOCKER_LOG:-$CACHE_ROOT/dockerd.log}
WAIT=${HELICAL_DOCKER_WAIT:-60}

engine_answers() { docker -H "unix://$SOCKET" info >/dev/null 2>&1; }

if ! engine_answers; then
    # Several scripts may ask at once: one starts the engine, the others wait for it.
    exec 9>"$CACHE_ROOT/docker-engine.lock"
    flock 9
fi
if ! engine_answers; then
    command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || ensure_apt docker.io
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # A second engine on the same machine needs its own pid file and exec root next to its socket.
    extra=()
    if [ "$SOCKET" != /var/run/docker.sock ]; then
        extra=(--pidfile "${SOCKET%.sock}.pid" --exec-root "${SOCKET%.sock}-exec")
    fi
    mkdir -p "$(dirname "$LOG_FILE")"
    log "starting dockerd (socket $SOCKET, data root $DATA_ROOT, log $LOG_FILE)"
    # setsid + nohup: the engine outlives this script and the shell that ran it.
    $sudo setsid nohup dockerd --host "unix://$SOCKET" --data-root "$DATA_ROOT" \
        --storage-driver=overlay2 --iptables=false --bridge=none "${extra[@]}" \
        >>"$LOG_FILE" 2>&1 </dev/null 9>&- &  # the engine must not hold the start lock
    pid=$!
    for _ in $(seq 1 "$WAIT"); do
        engine_answers && break
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOG_FILE" >&2; die "dockerd exited; see $LOG_FILE"; }
        sleep 1
    done
    engine_answers || { tail -n 20 "$LOG_FILE" >&2; die "dockerd did not answer within ${WAIT}s; see $LOG_FILE"; }
    log "dockerd is up ($(docker -H "unix://$SOCKET" version --format '{{.Server.Version}}'))"
fi
echo "$SOCKET"
