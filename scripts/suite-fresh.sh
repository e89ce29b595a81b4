#!/usr/bin/env bash
# The README's first command on a fresh clone: `make demo` in a clone of this working tree with an empty
# venv cache (tests/fresh), so a missing install step fails here even where this machine's cache is warm.
# Slow by nature (it builds the venvs from the lock files); skipped by -m "not slow" without starting anything.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

case " $* " in *"not slow"*) log "fresh: every test is slow; skipped by the marker expression"; exit 0 ;; esac

ensure_clients_env
run_pytest .venv-clients/bin/python fresh tests/fresh "$@"
