"""MLflow's tracking server in the compose stack (issue 23): the `mlflow` service answers its REST API with
runs kept in Postgres (database mlflow) and artifacts it writes to MinIO under mlflow/, for a client that has
nothing but its URL; mlflow-init can run again on the existing volume; a container on the runners' network
reaches MLflow by its service name but not Postgres. Runs on the stack test_stack.py brings up (its last test
takes it down)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import compose_containers, docker

pytestmark = pytest.mark.slow

# Runs inside a runner container: TCP connect to each target, then an HTTP GET where a URL is given. All at
# once: a name that doesn't resolve on the network waits for the engine's DNS to give up (about 10 s).
PROBE = r"""
import json, socket, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

def probe(host, port, url):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "http %d" % urllib.request.urlopen(url, timeout=10).status if url else "open"
    except OSError as err:
        return type(err).__name__

targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets)) as pool:
    states = list(pool.map(lambda target: probe(*target[1:]), targets))
print(json.dumps({target[0]: state for target, state in zip(targets, states)}))
"""


def container(service: str) -> dict:
    return next(c for c in compose_containers() if c["Config"]["Labels"]["com.docker.compose.service"] == service)


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def tracked(stack):
    """An experiment and a finished run logged through the REST API alone: a parameter, a metric at two steps,
    an artifact uploaded through the server. -> (experiment id, run info, artifact path, artifact bytes)."""
    experiment = stack.mlflow_api("POST", "experiments/create", json={"name": f"stack-test-{now_ms()}"})
    run = stack.mlflow_api("POST", "runs/create", json={
        "experiment_id": experiment["experiment_id"], "run_name": "stack-test", "start_time": now_ms(),
        "tags": [{"key": "airflow.run_id", "value": "stack-test"}]})["run"]["info"]
    run_id = run["run_id"]
    stack.mlflow_api("POST", "runs/log-parameter", json={"run_id": run_id, "key": "model", "value": "gf-tiny"})
    for step, loss in ((1, 0.5), (2, 0.25)):
        stack.mlflow_api("POST", "runs/log-metric", json={"run_id": run_id, "key": "loss", "value": loss,
                                                          "timestamp": now_ms(), "step": step})
    # the run's artifact root is the server's proxy, mlflow-artifacts:/<experiment>/<run>/artifacts
    assert run["artifact_uri"].startswith("mlflow-artifacts:/"), run["artifact_uri"]
    path = run["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/") + "/report.json"
    payload = json.dumps({"run": run_id, "cells": 120}).encode()
    upload = requests.put(f"{stack.mlflow}/api/2.0/mlflow-artifacts/artifacts/{path}", data=payload, timeout=60)
    assert upload.ok, upload.text
    stack.mlflow_api("POST", "runs/update", json={"run_id": run_id, "status": "FINISHED", "end_time": now_ms()})
    return experiment["experiment_id"], run, path, payload


def test_mlflow_tracks_a_run_for_a_client_with_only_its_url(stack, tracked):
    experiment_id, run, path, payload = tracked
    got = stack.mlflow_api("GET", "runs/get", params={"run_id": run["run_id"]})["run"]
    assert got["info"]["status"] == "FINISHED" and got["info"]["experiment_id"] == experiment_id
    assert got["data"]["params"] == [{"key": "model", "value": "gf-tiny"}]
    history = stack.mlflow_api("GET", "metrics/get-history", params={"run_id": run["run_id"], "metric_key": "loss"})
    assert sorted((m["step"], m["value"]) for m in history["metrics"]) == [(1, 0.5), (2, 0.25)]
    listed = stack.mlflow_api("GET", "artifacts/list", params={"run_id": run["run_id"]})["files"]
    assert [(f["path"], int(f["file_size"])) for f in listed] == [("report.json", len(payload))]
    download = requests.get(f"{stack.mlflow}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=60)
    assert download.ok and download.content == payload


def test_mlflow_artifacts_land_in_the_bucket_under_mlflow(stack, tracked):
    _, _, path, payload = tracked
    url = f"s3://{stack.bucket}/mlflow/{path}"
    assert stack.aws("s3", "ls", url).split()[-1] == "report.json"
    assert stack.aws("s3", "cp", url, "-").encode() == payload


def test_mlflow_keeps_runs_in_its_own_postgres_database(stack, tracked):
    experiment_id, run, _, _ = tracked
    postgres = container("postgres")["Id"]

    def sql(database: str, query: str) -> str:
        return docker("exec", postgres, "psql", "-U", "airflow", "-d", database, "-tAc", query).strip()

    assert sql("mlflow", f"SELECT status FROM runs WHERE run_uuid = '{run['run_id']}'") == "FINISHED"
    assert sql("mlflow", f"SELECT count(*) FROM experiments WHERE experiment_id = {int(experiment_id)}") == "1"
    assert sql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mlflow'") == "mlflow"
    # its role owns nothing else and may not even connect to Airflow's database
    assert sql("postgres", "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = 'mlflow'") == "f"
    assert sql("postgres", "SELECT has_database_privilege('mlflow', 'airflow', 'CONNECT')") == "f"


def test_mlflow_init_runs_again_on_the_existing_volume(stack, tracked):
    """As on a stack whose Postgres volume predates MLflow or a changed .env: the init finds role and database
    and only sets the password again; MLflow keeps its runs."""
    init = container("mlflow-init")["Id"]
    done = subprocess.run(["docker", "start", "--attach", init], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "database mlflow ready" in done.stdout + done.stderr
    experiment_id, run, _, _ = tracked
    assert stack.mlflow_api("GET", "runs/get", params={"run_id": run["run_id"]})["run"]["info"]["status"] == "FINISHED"
    assert requests.get(f"{stack.mlflow}/health", timeout=10).ok


def engine_without_isolation() -> bool:
    """The engine of this machine (scripts/docker-engine.sh) runs with --iptables=false (ENVIRONMENT.md): no
    DOCKER-ISOLATION rules, and the host, which forwards IP, routes between its bridge networks."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"dockerd") and b"--iptables=false" in args:
            return True
    return False


def probe_from_runners_network(stack, targets: list) -> dict[str, str]:
    """The PROBE in a container started as runners are: their network, user and no capabilities."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", stack.env.get("HELICAL_RUNNER_NETWORK", "helical-runners"),
         "--user", stack.env.get("HELICAL_RUNNER_USER", "50000:0"), "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "--entrypoint", "python", "helical-runner:cpu", "-c", PROBE,
         json.dumps(targets)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


BACKEND = (("postgres", 5432), ("redis", 6379), ("docker-socket-proxy", 2375))


def test_a_runner_container_reaches_mlflow_but_not_postgres(stack):
    """Runners log to MLflow by its service name, on their own network; Postgres, Redis and the socket proxy
    aren't on it: their names don't resolve there."""
    targets = [("mlflow", "mlflow", 5000, "http://mlflow:5000/api/2.0/mlflow/experiments/search?max_results=1")]
    targets += [(service, service, port, "") for service, port in BACKEND]
    seen = probe_from_runners_network(stack, targets)
    # the Host header is mlflow:5000: the server's --allowed-hosts takes the service name
    assert seen == {"mlflow": "http 200", **{service: "gaierror" for service, _ in BACKEND}}, seen


@pytest.mark.xfail(engine_without_isolation(), strict=True,
                   reason="this machine's engine runs with --iptables=false: the host routes between bridges")
def test_a_runner_container_cannot_route_to_the_backend_by_address(stack):
    """Separate networks are a boundary only where the engine isolates them (Docker's iptables rules, on by
    default): by its address on the stack's network, no backend service answers a runner."""
    helical = stack.env.get("HELICAL_NETWORK", "helical")
    targets = []
    for service, port in BACKEND:
        address = container(service)["NetworkSettings"]["Networks"][helical]["IPAddress"]
        targets.append((f"{service} at {address}", address, port, ""))
    seen = probe_from_runners_network(stack, targets)
    assert not [target for target, state in seen.items() if state == "open"], seen
