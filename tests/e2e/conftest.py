"""End-to-end fixtures: the stack (scripts/local_stack.py), a tiny Geneformer and synthetic cells on the data
folder, and the bucket. HELICAL_E2E_MODE says how runner steps run: docker (the default: through the
socket proxy the stack starts on the engine at HELICAL_E2E_ENGINE, with the runner image) or local (the runner venv's CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from local_stack import REPO, Stack  # noqa: E402

sys.path.insert(0, str(REPO / "dags"))

RUNNER_PY = REPO / ".venv-runner" / "bin" / "python"
MODE = os.environ.get("HELICAL_E2E_MODE", "docker")
INPUT_CAP_BYTES = 16 * 1024**2  # cpu-small's max_input_bytes in these tests, so an oversized upload is cheap


def e2e_profiles() -> str:
    """The repo's profiles with a small input cap for cpu-small, plus gpu-test (queue gpu with the CPU image
    and device, so the gpu queue's routing runs on a machine without a GPU) and tiny-mem (a memory cap the
    runner cannot start under: a real kernel OOM kill)."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "profiles.yaml").read_text())
    small = raw["profiles"]["cpu-small"]
    small["max_input_bytes"] = f"{INPUT_CAP_BYTES // 1024**2}m"
    raw["profiles"]["gpu-test"] = {**small, "queue": "gpu"}
    raw["profiles"]["tiny-mem"] = {**small, "memory_limit": "64m"}
    return yaml.safe_dump(raw, sort_keys=False)


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
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "model", "--cache-prefix",
                    str(data / "helical")], check=True, capture_output=True, timeout=300)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return data


@pytest.fixture(scope="session")
def stack(work_dir, data_dir):
    if MODE == "docker" and not os.environ.get("HELICAL_E2E_ENGINE"):
        pytest.skip("HELICAL_E2E_ENGINE is not set: run through scripts/suite-e2e.sh")
    profiles = data_dir / "profiles.yaml"  # in the data folder, so runner containers read it too (/data)
    profiles.write_text(e2e_profiles())
    stack = Stack(work=work_dir, data_dir=data_dir, runner_mode=MODE, race_ingest=True,
                  extra_env={"HELICAL_PROFILES": str(profiles), "HELICAL_RUNNER_PROFILES": "/data/profiles.yaml"},
                  engine_socket=os.environ.get("HELICAL_E2E_ENGINE", "").removeprefix("unix://"), pushgateway=True,
                  mlflow=True)
    try:
        stack.start()
        stack.s3().create_bucket(Bucket="helical")
        yield stack
    finally:
        stack.stop()
        if MODE == "docker":
            try:
                remove_runner_containers(data_dir)
            except subprocess.CalledProcessError as exc:  # a cleanup: say so, never fail the session on it
                print(f"could not remove this session's runner containers: {exc.stderr.strip()}")


def docker(*args: str) -> str:
    """The docker CLI on the engine itself (not through the proxy, which refuses most of these calls)."""
    env = {**os.environ, "DOCKER_HOST": os.environ.get("HELICAL_E2E_ENGINE", "unix:///var/run/docker.sock")}
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, env=env).stdout


def remove_runner_containers(data_dir: Path) -> None:
    """Runner containers that mounted this session's data folder, whatever their state: the tests keep failed
    and killed attempts to look at them, and a kept container pins the runner image it ran (a rebuilt image
    would stay on disk, 9 GB each, behind it)."""
    ids = docker("ps", "-aq", "--filter", "label=app=helical-runner").split()
    if not ids:
        return
    mine = [c["Id"] for c in json.loads(docker("inspect", *ids))
            if any(m.get("Source") == str(data_dir) for m in c.get("Mounts", []))]
    if mine:
        docker("rm", "-f", *mine)


@pytest.fixture(scope="session")
def h5ad(work_dir) -> Path:
    path = work_dir / "cells.h5ad"
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(path), "--cells",
                    "600"], check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture(scope="session")
def small_h5ad(work_dir) -> Path:
    """240 cells: quick to fine-tune, and six chunks of 40 for the resume test."""
    path = work_dir / "small.h5ad"
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(path), "--cells",
                    "240", "--seed", "7"], check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture(scope="session")
def bad_files(work_dir) -> dict[str, tuple[Path, str]]:
    """name -> (an .h5ad wrong in one way, words its reason must contain): tests/runner/bad_inputs.py, run
    with the runner's venv (anndata is not in Airflow's)."""
    folder = work_dir / "bad"
    subprocess.run([str(RUNNER_PY), str(REPO / "tests" / "runner" / "bad_inputs.py"), str(folder)], check=True,
                   capture_output=True, timeout=300)
    reasons = json.loads((folder / "reasons.json").read_text())
    return {name: (folder / f"{name}.h5ad", reason) for name, reason in reasons.items()}


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


# --- faults (test_faults.py): one fine-tune configuration, run once uninterrupted as the reference -------
FAULT_DATA_KEY = "datasets/faults.h5ad"
# 240 cells in chunks of 40, 3 epochs: long enough (about two minutes of training here) that the faults land
# mid fine-tune, with checkpoints before and after them
FAULT_CONF = {"data": f"s3://helical/{FAULT_DATA_KEY}", "cells_per_chunk": 40, "epochs": 3}


def trigger_finetune(stack: Stack, run_id: str, conf: dict | None = None) -> None:
    response = stack.api("POST", "/api/v2/dags/helical_finetune/dagRuns",
                         json={"dag_run_id": run_id, "logical_date": None, "conf": conf or FAULT_CONF})
    assert response.status_code == 200, response.text


def finetune_outcome(stack: Stack, run_id: str) -> dict:
    """What a person compares between two runs: steps, the loss of every step, cells, predictions."""
    client = stack.s3()
    report = json.loads(client.get_object(Bucket="helical", Key=f"runs/{run_id}/report.json")["Body"].read())
    predictions = client.get_object(Bucket="helical", Key=f"runs/{run_id}/predict/predictions.csv")["Body"].read()
    return {"steps": report["steps"], "losses": report["step_history"]["loss"],
            "cells": {k: report["cells"][k] for k in ("total", "validation", "trained_total")},
            "predictions": predictions.decode().splitlines()}


@pytest.fixture(scope="session")
def reference_run(stack, small_h5ad) -> dict:
    """FAULT_CONF's outcome, uninterrupted."""
    stack.s3().put_object(Bucket="helical", Key=FAULT_DATA_KEY, Body=small_h5ad.read_bytes())
    trigger_finetune(stack, "faults-reference")
    run = wait_for_run(stack, "helical_finetune", "faults-reference", 1800)
    assert run["state"] == "success", run
    return finetune_outcome(stack, "faults-reference")
