"""Uploads to incoming/ become helical_finetune runs on a real Airflow (Celery) that launch the runner."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import MODE, wait_for_run
from helical_lib import s3 as layout

pytestmark = pytest.mark.slow

PICKUP_SECONDS = 15  # the promise: an upload starts its run within this long (a little slack below)


def docker(*args: str) -> str:
    """The docker CLI on the engine itself (not through the proxy, which refuses most of these calls)."""
    env = {**os.environ, "DOCKER_HOST": os.environ.get("HELICAL_E2E_ENGINE", "unix:///var/run/docker.sock")}
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, env=env).stdout


def docker_ps(*filters: str) -> list[str]:
    return docker("ps", "-a", "--format", "{{.Names}}", *(f"--filter={f}" for f in filters)).split()


def test_dags_are_unpaused_and_parse(stack):
    def ready():
        dags = {d["dag_id"]: d for d in stack.get("/api/v2/dags")["dags"]}
        return dags if {"helical_finetune", "helical_ingest"} <= set(dags) else None

    from stack import wait_for

    dags = wait_for(ready, 180, "both DAGs in the API", interval=2)
    assert not dags["helical_finetune"]["is_paused"] and not dags["helical_ingest"]["is_paused"]
    assert stack.get("/api/v2/importErrors")["total_entries"] == 0


def test_trigger_form_is_validated_by_the_server(stack):
    """The API (like the UI's form) refuses a run whose conf breaks a Param's schema: no run is created."""
    for conf in ({"data": "http://example.com/x.h5ad"}, {"epochs": 0}, {"profile": "tpu-pod"}):
        response = stack.api("POST", "/api/v2/dags/helical_finetune/dagRuns",
                             json={"logical_date": None, "conf": conf})
        assert response.status_code == 400, (conf, response.status_code, response.text)
    assert stack.get("/api/v2/dags/helical_finetune/dagRuns")["total_entries"] == 0


def test_upload_runs_finetune_end_to_end(stack, h5ad):
    client = stack.s3()
    # the ingest DAG's sensor must be waiting (deferred) before the upload, so the pickup time is fair
    from stack import wait_for

    wait_for(lambda: any(ti["state"] == "deferred" for run in stack.get(
        "/api/v2/dags/helical_ingest/dagRuns")["dag_runs"] for ti in stack.get(
        f"/api/v2/dags/helical_ingest/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]),
        240, "the ingest sensor to defer", interval=2)

    good = client.put_object(Bucket="helical", Key="incoming/e2e-cells.h5ad", Body=h5ad.read_bytes())
    uploaded = time.monotonic()
    bad = client.put_object(Bucket="helical", Key="incoming/e2e-corrupt.h5ad", Body=b"not an HDF5 file\n" * 64)
    good_run = layout.ingest_run_id("incoming/e2e-cells.h5ad", good["ETag"])
    bad_run = layout.ingest_run_id("incoming/e2e-corrupt.h5ad", bad["ETag"])

    wait_for_run(stack, "helical_finetune", good_run, 60, states=("queued", "running", "success", "failed"))
    pickup = time.monotonic() - uploaded
    print(f"\nupload -> helical_finetune run created: {pickup:.1f} s")
    assert pickup <= PICKUP_SECONDS + 5

    run = wait_for_run(stack, "helical_finetune", good_run, 1200)
    tis = {ti["task_id"]: ti for ti in stack.get(
        f"/api/v2/dags/helical_finetune/dagRuns/{good_run}/taskInstances")["task_instances"]}
    assert run["state"] == "success", {k: v["state"] for k, v in tis.items()}
    assert run["conf"]["data"] == "s3://helical/incoming/e2e-cells.h5ad"
    assert tis["on_cpu.finetune"]["state"] == "success" and tis["on_gpu.finetune"]["state"] == "skipped"

    prefix = f"runs/{good_run}/"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="helical", Prefix=prefix)["Contents"]}
    assert {prefix + "report.json", prefix + "predict/predictions.csv", prefix + "predict/report.json",
            prefix + "summary.json"} <= keys
    report = json.loads(client.get_object(Bucket="helical", Key=prefix + "report.json")["Body"].read())
    assert report["status"] == "succeeded" and report["throughput"]["cells_per_second"] > 0
    summary = json.loads(client.get_object(Bucket="helical", Key=prefix + "summary.json")["Body"].read())
    assert summary["accuracy"] == report["accuracy"]
    if MODE == "docker":
        assert docker_ps(f"label=run_id={good_run}") == [], "runner containers left behind after success"

    # the corrupt upload: one failed run, the runner's reason in the task log, no retry, object untouched
    run = wait_for_run(stack, "helical_finetune", bad_run, 600)
    assert run["state"] == "failed"
    chunk = f"/api/v2/dags/helical_finetune/dagRuns/{bad_run}/taskInstances/on_cpu.chunk"
    ti = stack.get(chunk)
    assert ti["state"] == "failed" and ti["try_number"] == 1, ti
    log = json.dumps(stack.get(f"{chunk}/logs/1", full_content="true"))
    assert "helical-runner: error:" in log and "e2e-corrupt.h5ad" in log
    assert client.head_object(Bucket="helical", Key="incoming/e2e-corrupt.h5ad")["ETag"] == bad["ETag"]
    assert stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{bad_run}/taskInstances/quarantine_bad_input")[
        "state"] == "success"
    quarantined = client.get_object(Bucket="helical", Key=f"quarantine/{bad_run}/error.json")["Body"].read()
    assert json.loads(quarantined)["exit_code"] == 65
    assert client.head_object(Bucket="helical", Key=f"quarantine/{bad_run}/e2e-corrupt.h5ad")["ETag"] == bad["ETag"]
    assert "Contents" not in client.list_objects_v2(Bucket="helical", Prefix=f"quarantine/{good_run}/")
    if MODE == "docker":
        kept = docker_ps(f"label=run_id={bad_run}", "status=exited")
        assert len(kept) == 1, "the failed runner container is kept for debugging"
        [container] = json.loads(docker("inspect", kept[0]))
        assert container["State"]["ExitCode"] == 65
        assert container["Config"]["User"] == "50000:0"
        assert container["Config"]["Labels"]["dag_id"] == "helical_finetune"
        assert container["Config"]["Labels"]["task_id"] == "on_cpu.chunk"
        assert container["Config"]["Labels"]["profile"] == "cpu-small"
        host = container["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Memory"] == 8 * 1024**3 and host["NetworkMode"] == "host"
        assert [(m["Target"], m["Source"]) for m in host["Mounts"]] == [("/data", str(stack.data_dir))]
        docker("rm", *kept)


def test_each_upload_ran_once(stack):
    runs = stack.get("/api/v2/dags/helical_finetune/dagRuns")["dag_runs"]
    assert sorted(r["dag_run_id"].split("__")[1] for r in runs) == ["e2e-cells.h5ad", "e2e-corrupt.h5ad"]
    client = stack.s3()
    ledger = {o["Key"] for o in client.list_objects_v2(Bucket="helical", Prefix="ledger/")["Contents"]}
    assert len(ledger) == 2
