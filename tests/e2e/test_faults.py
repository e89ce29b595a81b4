"""Faults injected into the running stack while a fine-tune runs (issue 21): each real component killed or
restarted, and each run must end as it should with the outputs of an uninterrupted run (the same steps,
the same loss at every step, the same predictions), and at no moment two runner containers on one step.
(A lost Celery worker, the orphaned container it leaves and the retry that stops it: the compose stack's
worker host is killed that way in tests/stack/test_worker_host.py.)

S3 here is moto's server, which keeps objects in memory: a restart loses them, where MinIO keeps them on
its disk (a MinIO restart is a short outage: its docs, "Restart a MinIO deployment", restart servers in
place with their drives). The S3 fault therefore restarts the server and puts back every object it held
(bytes, metadata, content type), as MinIO's disk would; the runner container is paused for the seconds that
takes, since it would otherwise read a bucket MinIO never shows empty. It shows that the runner and
Airflow ride out the restart (their connections die with the old server and are retried), not what MinIO
does with its drives."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from conftest import FAULT_CONF, MODE, finetune_outcome, trigger_finetune, wait_for_run
from test_e2e import docker, docker_ps, task_log

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MODE != "docker", reason="runner containers need the Docker engine (docker mode)")]
FINETUNE = "on_cpu.finetune"


class ContainerWatch:
    """Counts this run's running finetune containers every 0.3 s for as long as it lives."""

    def __init__(self, run_id: str):
        self.run_id, self.most, self.seen = run_id, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                running = docker_ps(f"label=run_id={self.run_id}", f"label=task_id={FINETUNE}", "status=running")
            except Exception:  # noqa: BLE001 - the engine is never what a fault here stops; keep watching
                running = []
            self.most = max(self.most, len(running))
            self.seen.update(running)
            self._stop.wait(0.3)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def container_log(name: str) -> str:
    """What the container printed on stdout and stderr (the runner logs on stderr)."""
    env = {**os.environ, "DOCKER_HOST": os.environ.get("HELICAL_E2E_ENGINE", "unix:///var/run/docker.sock")}
    out = subprocess.run(["docker", "logs", name], capture_output=True, text=True, env=env, timeout=60)
    return out.stdout + out.stderr


def first_checkpoint(stack, run_id: str, timeout: float = 900) -> str:
    """The running finetune container, once it has written its first checkpoint: told by its log (a second
    chunk trained means the first one's checkpoint is saved), not by reading S3. moto computes an ETag
    lazily from a buffer that every reader shares, so a listing of the checkpoint while the runner reads
    its ETag back can hand the runner one moto then doesn't keep (MinIO and S3 compute it at write)."""
    from local_stack import wait_for

    def ready():
        running = docker_ps(f"label=run_id={run_id}", f"label=task_id={FINETUNE}", "status=running")
        if running and container_log(running[0]).count("helical_runner.training.loop: epoch 1/") >= 2:
            return running
        return None

    return wait_for(ready, timeout, "the first checkpoint of the finetune step", interval=0.5)[0]


def assert_same_as_uninterrupted(stack, run_id: str, reference: dict) -> None:
    outcome = finetune_outcome(stack, run_id)
    assert outcome["steps"] == reference["steps"]
    assert outcome["losses"] == pytest.approx(reference["losses"], rel=1e-5, abs=1e-6)
    assert outcome["cells"] == reference["cells"]
    assert outcome["predictions"] == reference["predictions"]


def test_infrastructure_restarts_during_a_finetune_are_ridden_out(stack, small_h5ad, reference_run):
    """Redis (the broker), the scheduler, the socket proxy and the S3 server restarted one after another
    while one fine-tune runs: it ends successfully with the outputs of an uninterrupted run."""
    from local_stack import wait_for

    run_id = "faults-restarts"
    client = stack.s3()
    trigger_finetune(stack, run_id)
    with ContainerWatch(run_id) as watch:
        first_checkpoint(stack, run_id)
        stack.restart("redis", down_seconds=3)
        stack.restart("scheduler", down_seconds=3)
        stack.restart_proxy(down_seconds=3)
        # S3: every object, then the server restarted empty and given them back (see the module docstring)
        paused = docker_ps(f"label=run_id={run_id}", "status=running")
        docker("pause", *paused)
        held = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="helical"):
            for obj in page.get("Contents", []):
                got = client.get_object(Bucket="helical", Key=obj["Key"])
                held[obj["Key"]] = (got["Body"].read(), got.get("Metadata", {}),
                                    got.get("ContentType", "binary/octet-stream"))
        stack.restart("s3", down_seconds=5)
        wait_for(lambda: stack.s3().list_buckets() is not None, 60, "the S3 server after its restart")
        restored = stack.s3()
        restored.create_bucket(Bucket="helical")
        for key, (body, metadata, content_type) in held.items():
            restored.put_object(Bucket="helical", Key=key, Body=body, Metadata=metadata, ContentType=content_type)
        docker("unpause", *paused)
        run = wait_for_run(stack, "helical_finetune", run_id, 1800)
    assert run["state"] == "success", run
    assert watch.most == 1, watch.seen
    assert_same_as_uninterrupted(stack, run_id, reference_run)


def test_a_runner_container_stopped_from_outside_is_retried_and_resumes(stack, small_h5ad, reference_run):
    """`docker stop` (SIGTERM, then SIGKILL after the grace period, as an operator or a host shutdown does)
    once the first checkpoint is written: the attempt ends at once with exit 143 (the runner exits on SIGTERM;
    137 would mean the stop waited for SIGKILL), the retry's new container resumes
    from that checkpoint (not from scratch), every training cell is counted once per epoch, and the outputs
    are an uninterrupted run's."""
    run_id = "faults-container-stop"
    trigger_finetune(stack, run_id)
    with ContainerWatch(run_id) as watch:
        docker("stop", "--time=5", first_checkpoint(stack, run_id))
        run = wait_for_run(stack, "helical_finetune", run_id, 1800)
    ti = stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances/{FINETUNE}")
    assert run["state"] == "success" and ti["try_number"] == 2, (run["state"], ti)
    assert "exit code 143" in task_log(stack, run_id, FINETUNE, 1)
    assert "resuming from checkpoint" in task_log(stack, run_id, FINETUNE, 2)
    assert watch.most == 1
    report = json.loads(stack.s3().get_object(Bucket="helical", Key=f"runs/{run_id}/report.json")["Body"].read())
    assert report["resumed_from"] and report["resumed_from"]["step"] > 0, report["resumed_from"]
    cells = report["cells"]
    trainable = cells["total"] - cells["validation"] - cells["dropped"]
    assert cells["trained_per_epoch"] == trainable and cells["trained_total"] == FAULT_CONF["epochs"] * trainable
    assert_same_as_uninterrupted(stack, run_id, reference_run)
    [stopped] = docker_ps(f"label=run_id={run_id}", "status=exited")  # the stopped attempt, kept for debugging
    docker("rm", stopped)
