#!/usr/bin/env bash
# `make test`: every test suite, each installing what it needs first (idempotent, cached).
# Suites are scripts/suite-<name>.sh, run in the order below; extra arguments go to each pytest
# (e.g. -m "not slow", -x). A failing suite does not stop the others; the exit code says if any failed.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

SUITES=(runner browser monitoring airflow docker e2e fresh stack)
rm -rf "$REPO_ROOT/build/test-results"
failed=()
for suite in "${SUITES[@]}"; do
    script="$REPO_ROOT/scripts/suite-$suite.sh"
    [ -f "$script" ] || continue
    log "=== suite: $suite"
    bash "$script" "$@" || failed+=("$suite")
done
summarise_junit "$REPO_ROOT/build/test-results"
if [ ${#failed[@]} -gt 0 ]; then
    log "failed suites: ${failed[*]}"
    exit 1
fi
