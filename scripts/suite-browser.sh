#!/usr/bin/env bash
# The run report pages and MLflow's UI in a real browser: the runner CLI (runner venv) writes them on a tiny model and
# synthetic cells, Playwright (clients venv) opens them in Debian's headless Chromium. All its tests are
# slow: with -m "not slow" (make test-fast) the suite is skipped without installing anything.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

case " $* " in *"not slow"*) log "browser: every test is slow; skipped by the marker expression"; exit 0 ;; esac
ensure_apt chromium
ensure_clients_env
ensure_runner_env
ensure_mlflow_env
run_pytest .venv-clients/bin/python browser tests/browser "$@"
