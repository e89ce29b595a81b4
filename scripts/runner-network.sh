#!/usr/bin/env bash
# Make sure the runners' Docker network exists on the engine at DOCKER_HOST, then print its gateway address.
#
#   scripts/runner-network.sh [NAME]        (default: $HELICAL_RUNNER_NETWORK, else helical-local-runners)
#
# Runner containers run users' data and models and are untrusted (README, "Security"): they join this
# network and no other. On this host the gateway address is where the services runners need (S3, the
# Pushgateway) listen; everything else listens on 127.0.0.1, which a container can't reach. The compose
# stack declares its own in its files instead (docker-compose-*.yaml, networks: runners, named helical-runners):
# the name here differs, so that compose, which won't adopt a network it did not make, can start on the same
# engine after `make demo` or the tests.
source "$(dirname "$0")/lib.sh"

name=${1:-${HELICAL_RUNNER_NETWORK:-helical-local-runners}}
if ! docker network inspect "$name" >/dev/null 2>&1; then
    # two scripts may race: the loser's create fails, and the inspect below finds the winner's network
    docker network create --driver bridge --label app=helical-runner "$name" >/dev/null 2>&1 || true
fi
gateway=$(docker network inspect "$name" --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null | awk '{print $1}')
[ -n "$gateway" ] || die "no Docker network $name (and it could not be created): docker network inspect $name says why"
echo "$gateway"
