#!/usr/bin/env bash
# Build the local base image the runner Dockerfile starts FROM on machines without a registry, once;
# reuse it when the tag exists. Prints the tag.
#
# Why: no image can be pulled here (ENVIRONMENT.md), so `python:3.12-slim-bookworm` is replaced by
# Debian bookworm made with `debootstrap --variant=minbase` and `docker import`, plus pyenv's Python 3.12.1
# copied to the same path inside (it is a bookworm build with an absolute prefix; Debian's python3 brings
# the shared libraries it links against: libssl3, libsqlite3-0, libffi8, ...). `python3.12` is put on PATH
# so the Dockerfile treats both bases alike.
#
# Settings (environment): HELICAL_BASE_IMAGE (tag, default helical-base:bookworm-py312),
# HELICAL_DEBIAN_MIRROR (default: the first deb.debian.org-style URI apt uses here).
source "$(dirname "$0")/lib.sh"

TAG=${HELICAL_BASE_IMAGE:-helical-base:bookworm-py312}
use_engine  # DOCKER_HOST's engine (a worker host's), else this machine's

# Several scripts may ask for the base at once: one builds, the others wait and reuse it.
exec 9>"$CACHE_ROOT/docker-base-image.lock"
flock 9

# The image records the hash of the recipe (this script) it was made with: a changed recipe rebuilds it.
RECIPE=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
if [ "$(docker image inspect -f '{{index .Config.Labels "io.helical-airflow.base-recipe"}}' "$TAG" 2>/dev/null)" = "$RECIPE" ]; then
    echo "$TAG"; exit 0
fi

ensure_apt debootstrap
PY=$(find_python312)
PY_PREFIX=$("$PY" -c 'import sys; print(sys.base_prefix)')
MIRROR=${HELICAL_DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -n1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

root=$(mktemp -d "$CACHE_ROOT/base-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
log "building $TAG: debootstrap minbase bookworm from $MIRROR + Python from $PY_PREFIX (about a minute)"
start=$SECONDS
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; die "debootstrap failed; see $root.log"; }
rm -f "$root.log"

# Python 3.12 at its build prefix, without its test suite and static library (180 MB); site-packages
# keeps only pip (the host's may hold local tweaks).
mkdir -p "$root$PY_PREFIX"
tar -C "$PY_PREFIX" --exclude='./lib/python3.12/site-packages/*' --exclude='./lib/python3.12/test' \
    --exclude='./lib/python3.12/config-3.12-*/*.a' -cf - . \
    | tar -C "$root$PY_PREFIX" -xf -
cp -a "$PY_PREFIX"/lib/python3.12/site-packages/pip* "$root$PY_PREFIX/lib/python3.12/site-packages/"
ln -sf "$PY_PREFIX/bin/python3.12" "$root/usr/local/bin/python3.12"
# Non-root users of derived images must reach the interpreter (pyenv puts it under /root). Group too:
# users in group 0 (uid 50000 in the runner image, like Airflow's) get the group bits, not the others'.
d=$PY_PREFIX; while [ "$d" != / ]; do chmod go+rx "$root$d"; d=$(dirname "$d"); done
chmod -R go+rX "$root$PY_PREFIX"
# The host's extra CA certificates (a TLS-intercepting egress proxy here): without them pip inside a
# build can't reach PyPI.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || log "warning: update-ca-certificates failed in the base"
fi
# Slim like the official slim images: no apt lists, docs or man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*

tar -C "$root" --numeric-owner -cf - . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3.12"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian bookworm minbase + Python 3.12 (local stand-in for python:3.12-slim-bookworm)\"" \
    --change "LABEL io.helical-airflow.base-recipe=$RECIPE" \
    - "$TAG" >/dev/null
docker run --rm --network none --user 50000:0 "$TAG" python3.12 -c 'import ssl, sqlite3, ctypes, venv' \
    || { docker rmi "$TAG" >/dev/null; die "the new base image can't run Python 3.12"; }
# the previous base, if any, is left untagged: drop it once nothing is built on it any more
docker image prune -f --filter "label=io.helical-airflow.base-recipe" >/dev/null 2>&1 || true
log "built $TAG in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
echo "$TAG"
