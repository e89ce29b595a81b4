"""Data parallel fine-tuning: two gloo processes fed the same global batches as one process end with the
same parameters after the same steps, and a killed two-process run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load

from conftest import BUCKET, MODEL, run_cli, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deterministic_model():
    """The tiny model with dropout off: with dropout, one and two processes draw different masks."""
    from helical_runner.data.synthetic import write_tiny_geneformer

    prefix = Path(tempfile.mkdtemp(prefix="helical-test-nodropout-"))
    write_tiny_geneformer(prefix, MODEL, dropout=0.0)
    return {"CACHE_DIR_HELICAL_PREFIX": str(prefix)}


@pytest.fixture
def manifest(s3, cells_h5ad, deterministic_model):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/dp.h5ad")
    result = run_cli("chunk", "--input", f"s3://{BUCKET}/incoming/dp.h5ad", "--output", f"s3://{BUCKET}/chunks/dp",
                     "--cells-per-chunk", "300", env=deterministic_model)
    assert result.returncode == 0, result.stderr
    return f"s3://{BUCKET}/chunks/dp/manifest.json"


def finetune(manifest: str, output: str, nproc: int) -> list[str]:
    return ["finetune", "--data", manifest, "--label-column", "cell_type", "--output", f"s3://{BUCKET}/{output}",
            "--precision", "fp32", "--batch-size", "15", "--lr", "1e-3", "--nproc", str(nproc)]


def outputs(s3, prefix: str) -> tuple[dict, dict]:
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/report.json")["Body"].read())
    weights = {}
    for name in ("model.safetensors", "classifier.safetensors"):
        weights.update(load(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/model/{name}")["Body"].read()))
    return report, weights


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_two_gloo_processes_match_one_process(s3, manifest, deterministic_model):
    one = run_cli(*finetune(manifest, "runs/dp-one", 1), env=deterministic_model)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(*finetune(manifest, "runs/dp-two", 2), env=deterministic_model)
    assert two.returncode == 0, two.stderr[-3000:]
    report_one, weights_one = outputs(s3, "runs/dp-one")
    report_two, weights_two = outputs(s3, "runs/dp-two")
    assert report_two["data_parallel_processes"] == 2 and report_one["data_parallel_processes"] == 1
    assert report_two["steps"] == report_one["steps"] and report_two["cells"] == report_one["cells"]
    assert report_two["losses"] == pytest.approx(report_one["losses"], rel=1e-4)
    assert_same_parameters(weights_one, weights_two)
    assert "starting 2 data-parallel processes" in two.stderr


def test_killed_two_process_run_resumes_exactly(s3, manifest, deterministic_model):
    straight = run_cli(*finetune(manifest, "runs/dp-straight", 2), env=deterministic_model)
    assert straight.returncode == 0, straight.stderr[-3000:]
    child = subprocess.Popen([sys.executable, "-m", "helical_runner", *finetune(manifest, "runs/dp-killed", 2)],
                             env={**os.environ, **deterministic_model}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/dp-killed/checkpoint.pt").get("KeyCount", 0),
                 timeout=300, interval=0.1)
        os.killpg(child.pid, signal.SIGKILL)  # the launcher and both ranks, as a lost node would
    finally:
        child.wait(timeout=60)
    resumed = run_cli(*finetune(manifest, "runs/dp-killed", 2), env=deterministic_model)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report_a, weights_a = outputs(s3, "runs/dp-straight")
    report_b, weights_b = outputs(s3, "runs/dp-killed")
    assert report_b["resumed_from"] is not None and report_b["steps"] == report_a["steps"]
    assert report_b["losses"] == pytest.approx(report_a["losses"], rel=1e-4)
    assert_same_parameters(weights_a, weights_b)
