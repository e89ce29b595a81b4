"""End-to-end fixtures: the stack (tests/e2e/stack.py), a tiny Geneformer and synthetic cells on the data
folder, and the bucket. HELICAL_E2E_MODE says how runner steps run: docker (the default: through the
socket proxy at HELICAL_E2E_DOCKER_URL, with the runner image) or local (the runner venv's CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import REPO, Stack  # noqa: E402

sys.path.insert(0, str(REPO / "dags"))

RUNNER_PY = REPO / ".venv-runner" / "bin" / "python"
MODE = os.environ.get("HELICAL_E2E_MODE", "docker")


@pytest.fixture(scope="session")
def work_dir():
    path = Path(tempfile.mkdtemp(prefix="helical-e2e-"))
    yield path
    logs = REPO / "build" / "e2e-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    for log in path.glob("*.log"):
        shutil.copy(log, logs / log.name)
    shutil.copytree(path / "airflow" / "logs", logs / "tasks", dirs_exist_ok=True) \
        if (path / "airflow" / "logs").exists() else None
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(work_dir):
    """The host data folder: helical's cache with a tiny random Geneformer, scratch; open to the runner's
    uid (50000) in the containers."""
    data = work_dir / "data"
    (data / "scratch").mkdir(parents=True)
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.synthetic", "model", "--cache-prefix",
                    str(data / "helical")], check=True, capture_output=True, timeout=300)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return data


@pytest.fixture(scope="session")
def stack(work_dir, data_dir):
    if MODE == "docker" and not os.environ.get("HELICAL_E2E_DOCKER_URL"):
        pytest.skip("HELICAL_E2E_DOCKER_URL is not set: run through scripts/suite-e2e.sh")
    stack = Stack(work=work_dir, data_dir=data_dir, runner_mode=MODE,
                  docker_url=os.environ.get("HELICAL_E2E_DOCKER_URL", ""))
    try:
        stack.start()
        stack.s3().create_bucket(Bucket="helical")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def h5ad(work_dir) -> Path:
    path = work_dir / "cells.h5ad"
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.synthetic", "data", "--output", str(path), "--cells",
                    "600"], check=True, capture_output=True, timeout=300)
    return path


def wait_for_run(stack: Stack, dag_id: str, run_id: str, timeout: float, states=("success", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    run = {}
    while time.monotonic() < deadline:
        response = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if response.status_code == 200:
            run = response.json()
            if run["state"] in states:
                return run
        assert not stack.dead(), f"stack processes died: {stack.dead()}"
        time.sleep(2)
    raise TimeoutError(f"{dag_id} run {run_id} not in {states} after {timeout:.0f} s (last: {run})")
