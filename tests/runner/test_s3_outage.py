"""S3 (MinIO) going away mid-stream: a short outage is ridden out with backoff; a long one fails with a
clear line and exit 69, leaving a checkpoint that a rerun resumes from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import BUCKET, run_cli, wait_for

pytestmark = pytest.mark.slow


def start_finetune(output: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "helical_runner", "finetune", "--data", f"s3://{BUCKET}/chunks/outage/manifest.json",
         "--label-column", "cell_type", "--output", output, "--precision", "fp32", "--batch-size", "16",
         "--lr", "1e-3"], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def chunked(s3, tiny_model, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/outage.h5ad")
    result = run_cli("chunk", "--input", f"s3://{BUCKET}/incoming/outage.h5ad", "--output",
                     f"s3://{BUCKET}/chunks/outage", "--cells-per-chunk", "100")
    assert result.returncode == 0, result.stderr


def first_checkpoint(s3, prefix: str) -> None:
    wait_for(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/checkpoint.pt").get("KeyCount", 0),
             timeout=300, interval=0.1)


def test_twenty_second_outage_is_ridden_out(s3, chunked, s3_server_control):
    child = start_finetune(f"s3://{BUCKET}/runs/short-outage", {"S3_RETRY_SECONDS": "120"})
    first_checkpoint(s3, "runs/short-outage")
    s3_server_control.stop()
    time.sleep(20)
    s3_server_control.start()
    assert child.wait(timeout=600) == 0, child.stderr.read()[-2000:]
    stderr = child.stderr.read()
    assert "S3 unreachable while" in stderr and "retrying" in stderr
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/short-outage/report.json")["Body"].read())
    assert report["status"] == "succeeded" and report["cells"]["trained_per_epoch"] + report["cells"]["validation"] == 900


def test_long_outage_fails_clearly_and_the_rerun_resumes(s3, chunked, s3_server_control):
    child = start_finetune(f"s3://{BUCKET}/runs/long-outage", {"S3_RETRY_SECONDS": "4"})
    first_checkpoint(s3, "runs/long-outage")
    s3_server_control.stop()
    try:
        code = child.wait(timeout=300)
    finally:
        s3_server_control.start()
    last = child.stderr.read().strip().splitlines()[-1]
    assert code == 69, last
    assert last.startswith("helical-runner: error: S3 endpoint http://127.0.0.1:") and "unreachable for 4s" in last
    rerun = run_cli("finetune", "--data", f"s3://{BUCKET}/chunks/outage/manifest.json", "--label-column", "cell_type",
                    "--output", f"s3://{BUCKET}/runs/long-outage", "--precision", "fp32", "--batch-size", "16",
                    "--lr", "1e-3")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from checkpoint" in rerun.stderr
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/long-outage/report.json")["Body"].read())
    assert report["resumed_from"]["chunks_done"] >= 1
