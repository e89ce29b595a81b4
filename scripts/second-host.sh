#!/usr/bin/env bash
# A second host on this machine, for trying worker hosts (docker-compose-worker.yaml) with two Docker engines:
# its own network namespace, reached from this one only over a veth pair, and its own Docker engine in it
# (own socket, data root and exec root; its containers' networks come from their own address pool, routed
# back over the veth). Processes of this machine reach it at its address, and it reaches this machine at
# the other end of the veth, as two hosts on one LAN would.
#
#   scripts/second-host.sh up             idempotent: the namespace, the veth, the engine; prints its socket
#   scripts/second-host.sh load IMAGE...  copies images from this machine's engine when the second lacks them
#                                         (compared by image ID; the second engine's data root keeps them, and
#                                         drops those a newer load left without a tag)
#   scripts/second-host.sh down           stops the engine, removes the veth and the namespace (keeps images)
#
# Why nsenter and not `ip netns exec`: the latter also remounts /sys for the namespace, which hides the
# cgroup mounts dockerd needs ("Devices cgroup isn't mounted"); nsenter --net enters the network only.
#
# Settings (environment): HELICAL_H2_NETNS (helical-h2), HELICAL_H2_ADDRESS (10.203.0.2: the second host),
# HELICAL_H2_PEER (10.203.0.1: this machine, as the second host sees it), HELICAL_H2_POOL (10.204.0.0/16:
# its containers' networks), HELICAL_H2_DATA_ROOT (/var/lib/helical-h2). Needs root.
source "$(dirname "$0")/lib.sh"

NETNS=${HELICAL_H2_NETNS:-helical-h2}
ADDRESS=${HELICAL_H2_ADDRESS:-10.203.0.2}
PEER=${HELICAL_H2_PEER:-10.203.0.1}
POOL=${HELICAL_H2_POOL:-10.204.0.0/16}
DATA_ROOT=${HELICAL_H2_DATA_ROOT:-/var/lib/helical-h2}
RUN=/run/$NETNS
SOCKET=$RUN/docker.sock
HERE_LINK=${NETNS//helical-/hx-}-a   # veth ends: interface names are at most 15 characters
THERE_LINK=${NETNS//helical-/hx-}-b
LOG_FILE=$CACHE_ROOT/$NETNS-dockerd.log

[ "$(id -u)" -eq 0 ] || die "scripts/second-host.sh needs root (network namespaces, a second dockerd)"
there() { nsenter --net="/var/run/netns/$NETNS" "$@"; }
engine() { docker -H "unix://$SOCKET" "$@"; }
engine_answers() { engine info >/dev/null 2>&1; }

up() {
    exec 9>"$CACHE_ROOT/$NETNS.lock"
    flock 9
    if ! ip netns list | grep -qw "$NETNS"; then
        ip netns add "$NETNS"
        ip link add "$HERE_LINK" type veth peer name "$THERE_LINK"
        ip link set "$THERE_LINK" netns "$NETNS"
        ip addr add "$PEER/24" dev "$HERE_LINK"
        ip link set "$HERE_LINK" up
        there ip addr add "$ADDRESS/24" dev "$THERE_LINK"
        there ip link set "$THERE_LINK" up
        there ip link set lo up
        there ip route add default via "$PEER"
        # the second host routes its containers' traffic; this machine sends their replies back over the veth
        there sysctl -qw net.ipv4.ip_forward=1
        ip route replace "$POOL" via "$ADDRESS"
        log "second host: network namespace $NETNS at $ADDRESS (this machine is $PEER there)"
    fi
    if ! engine_answers; then
        mkdir -p "$RUN" "$(dirname "$LOG_FILE")"
        there setsid nohup dockerd --host "unix://$SOCKET" --data-root "$DATA_ROOT" --exec-root "$RUN/exec" \
            --pidfile "$RUN/docker.pid" --storage-driver=overlay2 --iptables=false --bridge=none \
            --default-address-pool "base=$POOL,size=24" >>"$LOG_FILE" 2>&1 </dev/null 9>&- &  # not holding our lock
        for _ in $(seq 1 60); do engine_answers && break; sleep 1; done
        engine_answers || { tail -n 20 "$LOG_FILE" >&2; die "the second host's dockerd did not answer; see $LOG_FILE"; }
        log "second host: dockerd up (socket $SOCKET, data root $DATA_ROOT)"
    fi
    echo "$SOCKET"
}

load() {
    local image here there_id loaded=
    # one load at a time (scripts/suite-stack.sh starts one early, in the background): a second waits,
    # then finds the first's images there by ID
    exec {load_fd}>"$CACHE_ROOT/$NETNS-load.lock"
    flock "$load_fd"
    for image in "$@"; do
        here=$(docker image inspect -f '{{.Id}}' "$image") || die "no image $image on this machine's engine"
        there_id=$(engine image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
        [ "$here" = "$there_id" ] && continue
        log "second host: loading $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
        docker save "$image" | engine load -q >/dev/null
        loaded=1
    done
    # the image a tag named before (an older build) is dangling now: its gigabytes go
    [ -z "${loaded:-}" ] || engine image prune -f >/dev/null
}

down() {
    if [ -f "$RUN/docker.pid" ]; then
        kill "$(cat "$RUN/docker.pid")" 2>/dev/null || true
        for _ in $(seq 1 30); do [ -f "$RUN/docker.pid" ] || break; sleep 1; done
    fi
    ip route del "$POOL" 2>/dev/null || true
    ip link del "$HERE_LINK" 2>/dev/null || true
    ip netns del "$NETNS" 2>/dev/null || true
    log "second host $NETNS is down (images kept in $DATA_ROOT)"
}

case ${1:-} in
    up) up ;;
    load) shift; up >/dev/null; load "$@" ;;
    down) down ;;
    *) die "usage: $0 up|load IMAGE...|down" ;;
esac
