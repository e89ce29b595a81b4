#!/usr/bin/env bash
# Run the docker-socket-proxy on this host: Debian's haproxy with docker/socket-proxy/haproxy.cfg (the same
# file the compose stack mounts) and its container-create filter, docker/socket-proxy/create_filter.py.
#
#   scripts/socket-proxy.sh [--daemon] PORT|ADDR:PORT [SOCKET]
#
# PORT alone binds 127.0.0.1 only. SOCKET defaults to the engine's socket (scripts/docker-engine.sh).
# What a container create may hold comes from the environment, as for the Airflow workers:
#   HELICAL_DATA_DIR        host data folder runners mount at /data            (required)
#   HELICAL_RUNNER_NETWORK  the runners' network                               (default helical-local-runners)
#   HELICAL_PROFILES        resource profiles naming the runner images         (default config/profiles.yaml)
#   HELICAL_RUNNER_IMAGES   extra images, comma-separated                      (optional)
# Foreground by default (logs on stdout; Ctrl-C stops both). With --daemon, returns once the proxy answers
# GET /_ping and prints the two pids (haproxy, filter) on one line; stop them with `kill PIDS`.
source "$(dirname "$0")/lib.sh"

daemon=0
if [ "${1:-}" = --daemon ]; then daemon=1; shift; fi
[ $# -ge 1 ] || die "usage: $0 [--daemon] PORT|ADDR:PORT [SOCKET]"
bind=$1
case $bind in *:*) ;; *) bind=127.0.0.1:$bind ;; esac
socket=${2:-$(bash "$REPO_ROOT/scripts/docker-engine.sh")}
[ -S "$socket" ] || die "no Docker socket at $socket"
[ -n "${HELICAL_DATA_DIR:-}" ] || die "HELICAL_DATA_DIR is not set: the data folder runners may mount"
command -v haproxy >/dev/null 2>&1 || ensure_apt haproxy
cfg=$REPO_ROOT/docker/socket-proxy/haproxy.cfg

# The filter needs PyYAML for the profiles: the first of the project's venvs that has it.
py=""
for candidate in "$REPO_ROOT/.venv-airflow/bin/python" "$REPO_ROOT/.venv-runner/bin/python" python3; do
    if "$candidate" -c 'import yaml' 2>/dev/null; then py=$candidate; break; fi
done
[ -n "$py" ] || die "no Python with PyYAML for the create filter (run: make venvs)"
filter_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PROXY_BIND=$bind DOCKER_SOCKET=$socket CREATE_FILTER=127.0.0.1:$filter_port FILTER_BIND=127.0.0.1:$filter_port
export HELICAL_RUNNER_NETWORK=${HELICAL_RUNNER_NETWORK:-helical-local-runners}
export HELICAL_PROFILES=${HELICAL_PROFILES:-$REPO_ROOT/config/profiles.yaml}

answers() {
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null
}

if [ $daemon -eq 0 ]; then
    "$py" "$REPO_ROOT/docker/socket-proxy/create_filter.py" &
    filter_pid=$!
    trap 'kill "$filter_pid" 2>/dev/null || true' EXIT
    haproxy -db -f "$cfg"
    exit $?
fi

filter_log="$CACHE_ROOT/create-filter.$filter_port.log"
setsid nohup "$py" "$REPO_ROOT/docker/socket-proxy/create_filter.py" >"$filter_log" 2>&1 </dev/null &
filter_pid=$!
pidfile=$(mktemp "$CACHE_ROOT/socket-proxy.XXXXXX.pid")
stop() { kill "$filter_pid" 2>/dev/null || true; [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; rm -f "$pidfile"; }
haproxy -D -p "$pidfile" -f "$cfg" >/dev/null 2>&1 || { stop; die "haproxy failed to start (haproxy -c -f $cfg says why)"; }
url="http://${bind/#0.0.0.0/127.0.0.1}/_ping"
for _ in $(seq 1 100); do
    kill -0 "$filter_pid" 2>/dev/null || { stop; die "the create filter exited: $(tail -n 1 "$filter_log")"; }
    # the filter answers 403 to a GET: an HTTP answer at all means it listens
    if answers "$url" && python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$filter_port" 2>/dev/null; then
        echo "$(cat "$pidfile") $filter_pid"; rm -f "$pidfile"; exit 0
    fi
    sleep 0.1
done
stop
die "the socket proxy did not answer on $url"
