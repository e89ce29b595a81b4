#!/usr/bin/env bash
# The Docker tests: the runner image built from docker/Dockerfile.runner on a local engine, the socket proxy
# in front of it, the Dockerfiles' static checks. Runs on a fresh machine as root: installs docker.io,
# haproxy and debootstrap if missing, starts dockerd (scripts/docker-engine.sh), builds the base image and
# the runner image when a test needs them (cached after). -m "not slow" skips the image build.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_apt haproxy debootstrap
ensure_runner_env
DOCKER_HOST=unix://$(bash scripts/docker-engine.sh)
export DOCKER_HOST
run_pytest .venv-runner/bin/python docker tests/docker "$@"
