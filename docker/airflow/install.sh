#!/bin/sh
# The install step of docker/Dockerfile.airflow, run as root with the build files in /tmp/helical-airflow.
#   install.sh AIRFLOW_VERSION
set -eu
version=$1
files=/tmp/helical-airflow
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if command -v airflow >/dev/null 2>&1; then
    # The official image: its pip installs for the airflow user and refuses root. Airflow pinned on the
    # same line, so pip can't move it.
    runuser -u airflow -- pip install "apache-airflow==${version}" -r "$files/requirements.txt"
    exit 0
fi

# A plain Debian + python3.12 base: the tested lock, in a venv the airflow user can read.
grep -qx "apache-airflow==${version}" "$files/airflow.lock" \
    || { echo "requirements/airflow.lock does not pin apache-airflow==${version}" >&2; exit 1; }
sh "$files/apt-install.sh" curl dumb-init
useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow
python3.12 -m venv /opt/venv
# TLS checked against Debian's CA bundle (with the CAs the base added), not pip's own
PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install -q -r "$files/airflow.lock"
install -m 0755 "$files/entrypoint.sh" /entrypoint
mkdir -p /opt/airflow/logs /opt/airflow/dags /opt/airflow/plugins /opt/airflow/config
chown -R 50000:0 /opt/airflow /home/airflow
chmod -R g+rwX /opt/airflow /home/airflow
