# Shared by the Makefile's scripts: find Python 3.12, build virtualenvs once per lock file in a cache
# outside the clone, and link them into the repo. Source it; every function is idempotent.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_ROOT=${HELICAL_AIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/helical-airflow}
mkdir -p "$CACHE_ROOT"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# helical 3.x needs Python 3.12 exactly; pyenv ships it on these machines, a python3.12 on PATH also does.
find_python312() {
    local candidates=()
    command -v pyenv >/dev/null 2>&1 && candidates+=("$(pyenv root)/versions/3.12.1/bin/python")
    candidates+=("$HOME/.pyenv/versions/3.12.1/bin/python" /usr/bin/python3.12 /usr/local/bin/python3.12)
    local py
    for py in "${candidates[@]}"; do
        if [ -x "$py" ] && "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    die "Python 3.12 not found (tried: ${candidates[*]}); install it with pyenv: pyenv install 3.12"
}

# This machine's pip config lists local indexes that lack most projects: drop pip's per-project noise.
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }

# prune_old PREFIX KEEP [SPARES]: remove PREFIX* folders except KEEP and the SPARES newest others (default 1).
prune_old() {
    local prefix=$1 keep=$2 spares=${3:-1} old
    old=$(ls -dt "$prefix"* 2>/dev/null | grep -vx "$keep" | tail -n +$((spares + 1)) || true)
    [ -z "$old" ] || { log "pruning old cached environments: $old"; rm -rf $old; }
}

# need_disk DIR GB WHAT: stop with one line when DIR's disk has less than GB free for WHAT (pip's own
# "No space left on device" comes minutes later, half-way through an install).
need_disk() {
    local dir=$1 gb=$2 what=$3 free
    mkdir -p "$dir"
    free=$(df -P -B1M "$dir" | awk 'NR == 2 {print $4}')  # MB: df rounds GB up
    [ "$free" -ge $((gb * 1024)) ] || die "$what needs about $gb GB free in $dir; that disk has $((free / 1024)) GB (free some space, or set HELICAL_AIRFLOW_CACHE to a folder on a larger disk)"
}

# ensure_venv NAME LOCKFILE [PYTHON]: a virtualenv in the cache keyed by the lock file's hash, linked to
# $REPO_ROOT/.venv-NAME. A venv counts only once its .complete marker exists, so an interrupted install
# is rebuilt from scratch (venvs can't be renamed: their scripts carry the folder in their shebangs).
# Older venvs of the same name are pruned, keeping one spare (none of the runner's: 8 GB of torch and CUDA).
ensure_venv() {
    local name=$1 lock=$2 py=${3:-}
    local need_gb=2 spares=1
    [ "$name" = runner ] && need_gb=10 spares=0
    [ -n "$py" ] || py=$(find_python312)
    local key
    key=$( (cat "$lock"; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
    local dir="$CACHE_ROOT/venv-$name-$key"
    if [ ! -f "$dir/.complete" ]; then
        # Two scripts building the same venv at once would delete each other's work: one builds, the
        # other waits and then finds it complete.
        exec {lock_fd}>"$CACHE_ROOT/venv-$name.lock"
        flock "$lock_fd"
        if [ ! -f "$dir/.complete" ]; then
            log "building the $name virtualenv from ${lock#$REPO_ROOT/} (first run on this machine; cached after)"
            rm -rf "$dir"
            prune_old "$CACHE_ROOT"/venv-"$name"- "$dir" "$spares"
            need_disk "$CACHE_ROOT" "$need_gb" "the $name virtualenv"
            "$py" -m venv "$dir"
            "$dir/bin/pip" install -q --upgrade pip 2>&1 | quiet_pip
            "$dir/bin/pip" install -q -r "$lock" 2>&1 | quiet_pip
            touch "$dir/.complete"
        fi
        exec {lock_fd}>&-
    fi
    ln -sfn "$dir" "$REPO_ROOT/.venv-$name"
}

# The runner venv plus this clone's package, installed editable (cheap) so a cached venv follows
# whichever clone is running. Whether it is installed is asked of the venv itself: isolated (-I) and from
# another directory, since a plain `python -c 'import helical_runner'` run in the clone imports the package
# from the current directory and passes on a venv that has never seen the project (issue 11). The console
# script must exist too: runner steps run it.
runner_env_installed() {
    [ -x "$REPO_ROOT/.venv-runner/bin/helical-runner" ] || return 1
    (cd / && "$REPO_ROOT/.venv-runner/bin/python" -I -c '
import sys, pathlib, helical_runner
sys.exit(pathlib.Path(helical_runner.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())' \
        "$REPO_ROOT") 2>/dev/null
}

ensure_runner_env() {
    ensure_venv runner "$REPO_ROOT/requirements/runner.lock"
    runner_env_installed && return 0
    exec {lock_fd}>"$CACHE_ROOT/venv-runner.lock"
    flock "$lock_fd"
    log "installing this clone into the runner virtualenv (editable)"
    local output
    output=$("$REPO_ROOT/.venv-runner/bin/pip" install -q --no-deps --no-build-isolation -e "$REPO_ROOT" 2>&1) || true
    exec {lock_fd}>&-
    runner_env_installed || { printf '%s\n' "$output" >&2;
        die "the project did not install into $REPO_ROOT/.venv-runner (no helical-runner script; pip's output above)"; }
}

# The real clients the stack tests drive it with (AWS CLI, Playwright on Debian's chromium).
ensure_clients_env() {
    ensure_venv clients "$REPO_ROOT/requirements/clients.lock"
}

# The MLflow tracking server (make demo, the tests): its own venv, as the compose stack runs it in its own image.
ensure_mlflow_env() {
    ensure_venv mlflow "$REPO_ROOT/requirements/mlflow.lock"
}

# ensure_apt PACKAGE...: install the Debian packages that are missing (one apt-get update per machine).
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    # one apt-get at a time (make test's two lanes): a second one would fail on dpkg's lock
    exec {apt_fd}>"$CACHE_ROOT/apt.lock"
    flock "$apt_fd"
    log "installing Debian packages: ${missing[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    exec {apt_fd}>&-
}

# run_pytest PYTHON NAME TESTDIR [ARGS...]: pytest with a JUnit report under build/test-results/NAME.xml.
# pytest's exit code 5 (nothing collected) is a failure here like any other non-zero code.
run_pytest() {
    local py=$1 name=$2 dir=$3; shift 3
    mkdir -p "$REPO_ROOT/build/test-results"; rm -f "$REPO_ROOT/build/test-results/$name.xml"
    "$py" -m pytest "$dir" --junitxml="$REPO_ROOT/build/test-results/$name.xml" "$@"
}

# summarise_junit DIR: one closing line over every suite's JUnit report: "N passed, N failed, N skipped".
summarise_junit() {
    python3 - "$1" <<'PY'
import sys, pathlib, xml.etree.ElementTree as ET
tests = failures = skipped = 0
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        tests += int(suite.get("tests", 0)); skipped += int(suite.get("skipped", 0))
        failures += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
print(f"all suites: {tests - failures - skipped} passed, {failures} failed, {skipped} skipped")
PY
}

# wait_healthy SECONDS: every container of `compose ps` (the caller's compose function) healthy (or running, without a healthcheck) and every one-shot
# job exited 0; fails on a job that failed or a container that went unhealthy, with its last log lines.
wait_healthy() {
    local wait=$1 deadline=$((SECONDS + $1)) pending
    while :; do
        pending=()
        local id name state health code
        for id in $(compose ps -q); do
            IFS='|' read -r name state health code < <(docker inspect -f \
                '{{index .Config.Labels "com.docker.compose.service"}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.ExitCode}}' "$id")
            case "$state/$health" in
                running/healthy|running/) ;;
                exited/*)
                    # one-shot jobs have no restart policy; a service that stopped is a failure even at 0
                    case "$code/$(docker inspect -f '{{.HostConfig.RestartPolicy.Name}}' "$id")" in
                        0/|0/no) ;;
                        *) docker logs --tail 30 "$id" >&2; die "$name exited with code $code" ;;
                    esac ;;
                running/unhealthy)
                    docker logs --tail 30 "$id" >&2
                    docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$id" | tail -n 5 >&2
                    die "$name is unhealthy" ;;
                *) pending+=("$name:$state${health:+/$health}") ;;
            esac
        done
        [ ${#pending[@]} -eq 0 ] && return 0
        [ $SECONDS -lt $deadline ] || die "not healthy after ${wait}s: ${pending[*]}"
        sleep 3
    done
}

# use_engine: the engine the caller's DOCKER_HOST names (a worker host's, scripts/worker-host.sh), else this
# machine's, started if need be (scripts/docker-engine.sh). Exports DOCKER_HOST.
use_engine() {
    [ -n "${DOCKER_HOST:-}" ] && return 0
    DOCKER_HOST=unix://$(bash "$REPO_ROOT/scripts/docker-engine.sh")
    export DOCKER_HOST
}

# build_stack_images [VAR...]: the local images the caller's .env names (its env_value function; a tag set to
# anything else is used as it is), only those of the variables VAR when given.
build_stack_images() {
    local names=() name var tag
    while read -r name var tag; do
        [ "$(env_value "$var")" = "$tag" ] || continue
        [ $# -eq 0 ] || case " $* " in *" $var "*) ;; *) continue ;; esac
        case " ${names[*]} " in *" $name "*) ;; *) names+=("$name") ;; esac
    done < <(bash scripts/build-local-images.sh --list)
    [ ${#names[@]} -eq 0 ] || bash scripts/build-local-images.sh "${names[@]}" >/dev/null
}

# compose_up NAME / compose_down NAME: the caller's compose function up -d (or down, with the runner containers
# kept for debugging on the runners' network, which they hold open), its output in $CACHE_ROOT/NAME-up|down.log
# and only the failure's last lines shown.
compose_up() {
    compose up -d --remove-orphans >"$CACHE_ROOT/$1-up.log" 2>&1 \
        || { grep -v -e '^Creating' -e '^Starting' "$CACHE_ROOT/$1-up.log" | tail -n 30 >&2; die "docker-compose up failed"; }
}

compose_down() {
    local runners ids
    runners=$(env_value HELICAL_RUNNER_NETWORK)
    ids=$(docker ps -aq --filter "network=${runners:-helical-runners}" --filter label=app=helical-runner)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
    compose --profile registry down --volumes --remove-orphans >"$CACHE_ROOT/$1-down.log" 2>&1 \
        || { tail -n 30 "$CACHE_ROOT/$1-down.log" >&2; die "docker-compose down failed"; }
}
