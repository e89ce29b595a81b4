#!/usr/bin/env bash
# The main job through Airflow, on this machine, with nothing installed by hand: a private Airflow
# (Celery; Postgres, redis and moto's S3 on free ports; the stack of scripts/local_stack.py), a tiny random
# Geneformer and synthetic cells. The .h5ad is uploaded to incoming/, helical_ingest starts helical_finetune,
# and the run's outputs are copied from the (in-memory) S3 to data/demo/runs/<run_id>/ before the stack stops.
#
# Runner steps run in containers (runner image, through the socket proxy) when a Docker engine answers,
# otherwise as local processes of the runner venv; the script says which. Force one with
# HELICAL_DEMO_MODE=docker|local. HELICAL_DEMO_CELLS (default 2000: enough for the runner's default one epoch at lr 1e-4 to learn the tiny model's cell types) sets the data size.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_apt postgresql-15 redis-server
ensure_venv airflow "$REPO_ROOT/requirements/airflow.lock"
ensure_runner_env

mode=${HELICAL_DEMO_MODE:-}
if [ -z "$mode" ]; then
    if docker -H "unix://${HELICAL_DOCKER_SOCKET:-/var/run/docker.sock}" info >/dev/null 2>&1; then
        mode=docker
    else
        mode=local
    fi
fi
export HELICAL_DEMO_MODE=$mode HELICAL_DEMO_DOCKER_URL=""
if [ "$mode" = docker ]; then
    ensure_apt haproxy
    socket=$(bash scripts/docker-engine.sh)
    bash scripts/build-runner-image.sh cpu >/dev/null
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    proxy_pid=$(bash scripts/socket-proxy.sh --daemon "$port" "$socket")
    trap 'kill "$proxy_pid" 2>/dev/null || true' EXIT
    export HELICAL_DEMO_DOCKER_URL=tcp://127.0.0.1:$port
    log "demo: a Docker engine answers: runner steps run in helical-runner:cpu containers through the socket proxy"
else
    log "demo: no Docker engine: runner steps run as local processes (.venv-runner/bin/helical-runner)"
fi

.venv-airflow/bin/python - "$@" <<'PY'
import json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

repo = Path.cwd()
sys.path[:0] = [str(repo / "scripts"), str(repo / "dags")]
from local_stack import Stack, wait_for  # noqa: E402
from helical_lib import s3 as layout  # noqa: E402

mode, cells = os.environ["HELICAL_DEMO_MODE"], os.environ.get("HELICAL_DEMO_CELLS", "2000")
data = repo / "data" / "demo"
(data / "scratch").mkdir(parents=True, exist_ok=True)
runner_py = str(repo / ".venv-runner" / "bin" / "python")
say = lambda text: print(f"[demo] {text}", flush=True)
if not (data / "helical").exists():
    say("writing a tiny random Geneformer into data/demo/helical (helical's cache layout)")
    subprocess.run([runner_py, "-m", "helical_runner.synthetic", "model", "--cache-prefix", str(data / "helical")],
                   check=True, capture_output=True)
h5ad = data / f"cells-{cells}.h5ad"
if not h5ad.exists():
    say(f"writing {cells} synthetic cells to {h5ad.relative_to(repo)}")
    subprocess.run([runner_py, "-m", "helical_runner.synthetic", "data", "--output", str(h5ad), "--cells", cells, "--genes-per-cell", "150"],
                   check=True, capture_output=True)
for path in [data, *data.rglob("*")]:  # the runner image's user (50000) writes scratch and the cache
    path.chmod(0o777 if path.is_dir() else 0o666)

work = Path(tempfile.mkdtemp(prefix="helical-demo-"))
stack = Stack(work=work, data_dir=data, runner_mode=mode, docker_url=os.environ["HELICAL_DEMO_DOCKER_URL"])
code = 1
try:
    say("starting Postgres, redis, moto S3 and Airflow (api-server, scheduler, dag-processor, triggerer, "
        "Celery worker); logs in " + str(work))
    start = time.monotonic()
    stack.start()
    client = stack.s3()
    client.create_bucket(Bucket="helical")
    say(f"Airflow answers on http://127.0.0.1:{stack.ports['api']} (user admin, password {stack.password}) "
        f"after {time.monotonic() - start:.0f} s")
    wait_for(lambda: {"helical_finetune", "helical_ingest"} <= {d["dag_id"] for d in stack.get("/api/v2/dags")["dags"]},
             300, "the DAGs", interval=2)
    key = f"incoming/{h5ad.name}"
    etag = client.put_object(Bucket="helical", Key=key, Body=h5ad.read_bytes())["ETag"]
    run_id = layout.ingest_run_id(key, etag)
    say(f"uploaded s3://helical/{key}; helical_ingest will start helical_finetune run {run_id}")
    seen, state = {}, None
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        response = stack.api("GET", f"/api/v2/dags/helical_finetune/dagRuns/{run_id}")
        if response.status_code == 200:
            state = response.json()["state"]
            for ti in stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances")["task_instances"]:
                if ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
                    seen[ti["task_id"]] = ti["state"]
                    say(f"  {ti['task_id']:<22} {ti['state']}")
            if state in ("success", "failed"):
                break
        if stack.dead():
            raise SystemExit(f"stack processes died: {stack.dead()} (logs in {work})")
        time.sleep(3)
    out = data / "runs" / run_id
    for obj in client.list_objects_v2(Bucket="helical", Prefix=f"runs/{run_id}/").get("Contents", []):
        target = out / obj["Key"].removeprefix(f"runs/{run_id}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("helical", obj["Key"], str(target))
    say(f"run {state}; its outputs are in {out.relative_to(repo)}/")
    if (out / "summary.json").exists():
        print(json.dumps(json.loads((out / "summary.json").read_text()), indent=1))
    code = 0 if state == "success" else 1
finally:
    stack.stop()
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
sys.exit(code)
PY
