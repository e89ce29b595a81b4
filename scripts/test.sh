#!/usr/bin/env bash
# `make test`: every test suite, each installing what it needs first (idempotent, cached). Suites are
# scripts/suite-<name>.sh; extra arguments go to each pytest (e.g. -m "not slow", -x). A failing suite does
# not stop the others; the exit code says if any failed.
#
# Two lanes run side by side, each its suites in order: the suites that never touch a Docker engine, and
# the ones that do (each of those starts Airflow, builds images or runs containers, and they share one
# engine, so they stay in one lane). The Docker lane spends most of its time waiting on services and
# containers, which is what the other lane fills. Nothing else is shared between the lanes: every server a
# suite starts takes a free port, venv builds and apt installs take a lock (scripts/lib.sh).
# HELICAL_TEST_LANES=1 runs everything in one lane, in the order below.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

LANES=("runner browser monitoring airflow fresh" "docker e2e stack")
[ "${HELICAL_TEST_LANES:-2}" = 1 ] && LANES=("${LANES[*]}")

results=$REPO_ROOT/build/test-results
rm -rf "$results" "$REPO_ROOT/build/test-logs"
mkdir -p "$results" "$REPO_ROOT/build/test-logs"

# run_lane SUITE...: each suite's output goes to build/test-logs/SUITE.log and, line by line with a
# "[SUITE]" prefix, to this script's output; a failed suite is listed in build/test-logs/failed.
run_lane() {
    local suite started status
    for suite in "$@"; do
        [ -f "$REPO_ROOT/scripts/suite-$suite.sh" ] || continue
        started=$SECONDS
        log "=== suite: $suite"
        set +e
        bash "$REPO_ROOT/scripts/suite-$suite.sh" "${PYTEST_ARGS[@]}" 2>&1 \
            | tee "$REPO_ROOT/build/test-logs/$suite.log" | sed -u "s/^/[$suite] /"
        status=${PIPESTATUS[0]}
        set -e
        [ "$status" -eq 0 ] || echo "$suite" >>"$REPO_ROOT/build/test-logs/failed"
        log "=== suite: $suite $([ "$status" -eq 0 ] && echo passed || echo "FAILED ($status)") in $((SECONDS - started)) s"
    done
}

PYTEST_ARGS=("$@")
pids=()
for lane in "${LANES[@]}"; do
    # shellcheck disable=SC2086  # a lane is a list of suite names
    run_lane $lane &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done

summarise_junit "$results"
if [ -s "$REPO_ROOT/build/test-logs/failed" ]; then
    log "failed suites: $(tr '\n' ' ' <"$REPO_ROOT/build/test-logs/failed")"
    exit 1
fi
