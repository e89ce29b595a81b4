#!/bin/sh
# apt-get install for the local images (docker/local/*.Dockerfile), run inside `docker build --network host`
# on the local Debian base (scripts/docker-base-image.sh), whose apt lists were removed to keep it small.
# Adds bookworm-updates and bookworm-security from the base's own mirror, installs the packages without
# recommends, and leaves no lists, docs or man pages behind (one layer, slim like the official images).
#   apt-install.sh PACKAGE...
set -eu
mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
printf 'deb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' "$mirror" "${mirror%/}" \
    > /etc/apt/sources.list.d/updates.list
# snapshot mirrors serve Release files past their Valid-Until date
printf 'Acquire::Check-Valid-Until "false";\nAPT::Install-Recommends "false";\n' > /etc/apt/apt.conf.d/90helical
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
