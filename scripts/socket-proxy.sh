#!/usr/bin/env bash
# Run the docker-socket-proxy (docker/socket-proxy/haproxy.cfg, the same file the compose stack mounts)
# with Debian's haproxy on this host.
#
#   scripts/socket-proxy.sh [--daemon] PORT|ADDR:PORT [SOCKET]
#
# PORT alone binds 127.0.0.1 only. SOCKET defaults to the engine's socket (scripts/docker-engine.sh).
# Foreground by default (exec: the caller's pid is haproxy's; logs on stdout). With --daemon, returns once
# the proxy answers GET /_ping and prints haproxy's pid; stop it with `kill PID`.
source "$(dirname "$0")/lib.sh"

daemon=0
if [ "${1:-}" = --daemon ]; then daemon=1; shift; fi
[ $# -ge 1 ] || die "usage: $0 [--daemon] PORT|ADDR:PORT [SOCKET]"
bind=$1
case $bind in *:*) ;; *) bind=127.0.0.1:$bind ;; esac
socket=${2:-$(bash "$REPO_ROOT/scripts/docker-engine.sh")}
[ -S "$socket" ] || die "no Docker socket at $socket"
command -v haproxy >/dev/null 2>&1 || ensure_apt haproxy
cfg=$REPO_ROOT/docker/socket-proxy/haproxy.cfg
export PROXY_BIND=$bind DOCKER_SOCKET=$socket

if [ $daemon -eq 0 ]; then
    exec haproxy -db -f "$cfg"
fi

pidfile=$(mktemp "$CACHE_ROOT/socket-proxy.XXXXXX.pid")
haproxy -D -p "$pidfile" -f "$cfg" >/dev/null 2>&1 || die "haproxy failed to start (haproxy -c -f $cfg says why)"
url="http://${bind/#0.0.0.0/127.0.0.1}/_ping"
for _ in $(seq 1 50); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$url" 2>/dev/null; then
        cat "$pidfile"; rm -f "$pidfile"; exit 0
    fi
    sleep 0.1
done
kill "$(cat "$pidfile")" 2>/dev/null || true
rm -f "$pidfile"
die "the socket proxy did not answer on $url"
