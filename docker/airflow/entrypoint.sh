#!/bin/sh
# /entrypoint of the Airflow image on a plain-Python base (docker/airflow/install.sh); the official image
# brings its own. The official one's command conventions the compose files rely on: `bash ...`,
# `python ...` run as given; `airflow X` and a bare Airflow subcommand (`api-server`, `celery worker`)
# both run `airflow X`.
set -eu
umask 0002  # group 0 shares the logs volume, as in the official image
case "${1:-}" in
    bash|sh|python|python3) exec "$@" ;;
    airflow) shift ;;
esac
exec airflow "$@"
