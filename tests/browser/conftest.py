"""The browser suite: report pages produced by the real runner CLI (in the runner's virtualenv, on a tiny
random Geneformer and synthetic cells), opened in Debian's headless Chromium through Playwright."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from chromium import launch  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402
RUNNER_PYTHON = REPO / ".venv-runner" / "bin" / "python"
LABEL = "cell_type"


def _runner(env: dict, *args: str) -> str:
    result = subprocess.run([str(RUNNER_PYTHON), *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args[:3])} failed:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="session")
def mlflow(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, artifacts in moto's S3 server from the runner venv)."""
    import socket

    work = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s3 = subprocess.Popen([str(RUNNER_PYTHON.parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _runner({**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}, "-c",
                "import boto3, sys, time\nfor _ in range(100):\n    try:\n        boto3.client('s3', endpoint_url="
                "sys.argv[1], region_name='us-east-1').create_bucket(Bucket='helical'); break\n"
                "    except Exception: time.sleep(0.2)", f"http://127.0.0.1:{port}")
        server = MlflowServer(work, f"http://127.0.0.1:{port}").start()
        yield server
        server.stop()
    finally:
        s3.terminate()


@pytest.fixture(scope="session")
def run_reports(tmp_path_factory, mlflow) -> dict:
    """finetune then predict (the registered champion) on 400 synthetic cells, both tracked in `mlflow`;
    {"finetune": folder, "predict": folder, "classes": [...], "finetune_report": report.json's dict}."""
    work = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "CACHE_DIR_HELICAL_PREFIX": str(work / "helical"), "HELICAL_SCRATCH": str(work / "scratch"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": mlflow.uri, "HELICAL_DAG_ID": "helical_finetune"}
    env.pop("PUSHGATEWAY_URL", None)
    data = work / "cells.h5ad"
    _runner(env, "-m", "helical_runner.data.synthetic", "model", "--cache-prefix", str(work / "helical"))
    _runner(env, "-m", "helical_runner.data.synthetic", "data", "--output", str(data), "--cells", "400",
            "--genes-per-cell", "150")
    classes = json.loads(_runner(env, "-c", "import anndata, json, sys; obs = anndata.read_h5ad(sys.argv[1]).obs; "
                                 f"print(json.dumps(sorted(map(str, obs['{LABEL}'].unique()))))", str(data)))
    run = work / "run"
    _runner(env, "-m", "helical_runner.cli", "finetune", "--data", str(data), "--label-column", LABEL,
            "--output", str(run), "--precision", "fp32", "--batch-size", "16", "--lr", "2e-3", "--epochs", "2",
            "--val-fraction", "0.2", "--cells-per-chunk", "200")
    _runner(env, "-m", "helical_runner.cli", "predict", "--model", "models:/helical-cell_type@champion",
            "--data", str(data), "--output", str(run / "predict"), "--precision", "fp32")
    return {"finetune": run, "predict": run / "predict", "classes": classes,
            "finetune_report": json.loads((run / "report.json").read_text())}


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()
