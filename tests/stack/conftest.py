"""The stack test's fixtures: `make stack` up (and `make stack-down` at the end), the stack's .env, and the
clients a user has: the AWS CLI, the REST API over HTTP, Prometheus's HTTP API, the docker CLI on the
engine. No Airflow import: the stack is driven from outside, as a user drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from local_stack import wait_for  # noqa: E402 - polling with the last error in the message
ARTIFACTS = REPO / "build" / "stack"  # make's output, compose logs, screenshots
RUNNER_PY = REPO / ".venv-runner" / "bin" / "python"


def read_env(path: Path) -> dict[str, str]:
    """The stack's settings as docker-compose sees them: .env's, where the environment sets none of its own
    (scripts/suite-stack.sh sets the bind address and the worker hosts that way)."""
    env = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            env[name.strip()] = os.environ.get(name.strip(), value)
    return env


def docker(*args: str) -> str:
    """The docker CLI on the engine itself (DOCKER_HOST from scripts/suite-stack.sh)."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def run_logged(what: str, command: list[str], log_name: str, timeout: float, env: dict | None = None) -> None:
    """Run `command` with its output in build/stack/LOG_NAME; a failure shows the log's last lines."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / log_name, "wb") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env)
    assert done.returncode == 0, f"{what} failed: see {ARTIFACTS / log_name}\n" + \
        "\n".join((ARTIFACTS / log_name).read_text(errors="replace").splitlines()[-25:])


def make(target: str, log_name: str, timeout: float) -> None:
    run_logged(f"make {target}", ["make", "-C", str(REPO), target], log_name, timeout)


@dataclass
class Stack:
    env: dict[str, str]
    _token: str = ""

    @property
    def address(self) -> str:
        """Where the published ports are: HELICAL_BIND_ADDRESS (every address of this machine: 127.0.0.1)."""
        address = self.env.get("HELICAL_BIND_ADDRESS") or "127.0.0.1"
        return "127.0.0.1" if address == "0.0.0.0" else address

    @property
    def airflow(self) -> str:
        return f"http://{self.address}:{self.env['AIRFLOW_API_PORT']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.address}:{self.env['MINIO_API_PORT']}"

    @property
    def prometheus(self) -> str:
        return f"http://{self.address}:{self.env['PROMETHEUS_PORT']}"

    @property
    def mlflow(self) -> str:
        return f"http://{self.address}:{self.env['MLFLOW_PORT']}"

    @property
    def bucket(self) -> str:
        return self.env.get("HELICAL_BUCKET", "helical")

    @property
    def login(self) -> tuple[str, str]:
        return self.env.get("_AIRFLOW_WWW_USER_USERNAME", "airflow"), self.env["_AIRFLOW_WWW_USER_PASSWORD"]

    # --- the AWS CLI, with the stack's credentials --------------------------------------------------------
    def aws(self, *args: str) -> str:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.env["HELICAL_S3_ACCESS_KEY"],
               "AWS_SECRET_ACCESS_KEY": self.env["HELICAL_S3_SECRET_KEY"],
               "AWS_DEFAULT_REGION": self.env.get("AWS_DEFAULT_REGION", "us-east-1")}
        aws = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv-clients")) / "bin" / "aws"
        done = subprocess.run([str(aws), *args, "--endpoint-url", self.s3_endpoint], capture_output=True,
                              text=True, env=env, timeout=300)
        assert done.returncode == 0, f"aws {' '.join(args)}: {done.stderr}"
        return done.stdout

    # --- Airflow's REST API: a token from /auth/token, then /api/v2 -------------------------------------
    def token(self) -> str:
        if not self._token:
            user, password = self.login
            response = requests.post(f"{self.airflow}/auth/token", json={"username": user, "password": password},
                                     timeout=30)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.airflow}{path}", timeout=30,
                                headers={"Authorization": f"Bearer {self.token()}"}, **kwargs)

    def get(self, path: str, **params) -> dict:
        response = self.api("GET", path, params=params)
        response.raise_for_status()
        return response.json()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        def finished():
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None
        return wait_for(finished, timeout, f"{dag_id} run {run_id} to finish", interval=3)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def plan(self, run_id: str) -> dict:
        """The run's plan (check_input's XCom): run id as the runner sees it, S3 prefixes."""
        entry = self.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances/check_input/"
                         "xcomEntries/return_value", deserialize="true")
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value

    # --- MLflow's REST API, as any client with only the tracking URI --------------------------------------
    def mlflow_api(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.mlflow}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    # --- Prometheus's HTTP API ------------------------------------------------------------------------------
    def query(self, promql: str) -> list[dict]:
        response = requests.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=30)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def targets(self) -> list[dict]:
        response = requests.get(f"{self.prometheus}/api/v1/targets", params={"state": "active"}, timeout=30)
        response.raise_for_status()
        return response.json()["data"]["activeTargets"]


def pytest_collection_modifyitems(config, items):
    """The order the modules share the one stack in: the AWS CLI uploads (test_stack.py) before the browser's
    fine-tune, so the labelled upload's model is the first version of helical-cell_type registered, champion
    (the browser's run, on the same cells, takes the alias only if its macro-F1 beats it), and it annotates the
    unlabelled upload; then test_browser.py; then test_stack.py's AFTER_THE_BROWSER: the test that takes the
    stack down. Only this folder's tests move, among themselves. (The browser's run alongside the unlabelled
    upload's two made it crawl towards its 900 s on this loaded machine, for little time saved.)"""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]

    def rank(item) -> int:
        if item.path.name == "test_browser.py":
            return 1
        after = getattr(item.module, "AFTER_THE_BROWSER", ())
        return 2 + after.index(item.name) if item.name in after else 0

    for slot, item in zip(slots, sorted((items[i] for i in slots), key=rank)):  # stable: files keep their order
        items[slot] = item


def compose_containers() -> list[dict]:
    """Every container of the compose project (docker inspect), running or not."""
    ids = docker("ps", "-aq", "--filter", "label=com.docker.compose.project=helical-airflow").split()
    return json.loads(docker("inspect", *ids)) if ids else []


def save_logs() -> None:
    """Every service's log, to build/stack/compose.log (a test artifact)."""
    with open(ARTIFACTS / "compose.log", "wb") as log:
        subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "compose", "logs", "--no-color", "--timestamps"],
                       stdout=log, stderr=subprocess.STDOUT, timeout=120)


@pytest.fixture(scope="session")
def stack():
    try:
        make("stack", "make-stack.log", timeout=1800)
        yield Stack(read_env(REPO / ".env"))
    finally:  # a `make stack` that failed half-way (a service unhealthy in time) goes down too
        if compose_containers():
            save_logs()
        # the last test takes it down itself; after a failure it must still go (HELICAL_STACK_KEEP=1 keeps it
        # up for a look, or for the next run to reuse)
        if compose_containers() and os.environ.get("HELICAL_STACK_KEEP") != "1":
            make("stack-down", "make-stack-down.log", timeout=600)


@pytest.fixture(scope="session")
def data_dir(stack) -> Path:
    """The stack's data folder with a tiny random Geneformer in helical's cache (no download here), owned
    by the runner's uid as the runner containers write there."""
    data = Path(stack.env["HELICAL_DATA_DIR"])
    put_tiny_model(data, stack)
    return data


def put_tiny_model(data: Path, stack: Stack) -> None:
    """A tiny random Geneformer in helical's cache under the data folder `data`, as a host's runners find it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "model", "--cache-prefix",
                    str(data / "helical")], check=True, capture_output=True, timeout=300, env=env)
    uid, _, gid = stack.env.get("HELICAL_RUNNER_USER", "50000:0").partition(":")
    for path in [data / "helical", *(data / "helical").rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, int(uid), int(gid or 0))
        else:
            path.chmod(0o777 if path.is_dir() else 0o666)


@pytest.fixture(scope="session")
def cells(tmp_path_factory) -> Path:
    """120 synthetic cells in 4 types (a cell_type column), written by the runner's own code: a few steps."""
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(path), "--cells",
                    "120", "--seed", str(int(time.time()) % 1000)], check=True, capture_output=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return path
