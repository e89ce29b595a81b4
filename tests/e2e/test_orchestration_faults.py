"""Orchestration faults found in the field (issue 14), on the same real stack as test_e2e.py: uploads whose
names clean alike, a GPU-profile run with no gpu worker (and with one started later), and a runner container
the kernel kills at its profile's memory cap."""

from __future__ import annotations

import json

import pytest

from conftest import MODE, wait_for_run
from helical_lib import s3 as layout
from test_e2e import CREATED, docker, docker_ps, failed_step, get_json, ingest_sensors_deferred, put, task_log

pytestmark = pytest.mark.slow

# pairs that cleaned to the same run id before: the second upload of each pair was silently skipped
ALIKE = [("incoming/c v2.h5ad", "incoming/c++ v2.h5ad"), ("incoming/é-ñ.h5ad", "incoming/ü-データ.h5ad")]


def task_instances(stack, run_id: str) -> dict[str, dict]:
    return {ti["task_id"]: ti for ti in stack.get(
        f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances")["task_instances"]}


def trigger(stack, run_id: str, conf: dict) -> None:
    from local_stack import wait_for

    wait_for(lambda: stack.api("GET", "/api/v2/dags/helical_finetune").status_code == 200, 180,
             "helical_finetune in the API", interval=2)
    response = stack.api("POST", "/api/v2/dags/helical_finetune/dagRuns",
                         json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text


def test_uploads_whose_names_clean_alike_get_one_run_each(stack):
    """The same tiny bytes (not an .h5ad, so each run ends quickly at inspect) under four keys that clean to
    two names: four runs, each with its exact key and ETag in its conf, each upload quarantined under its own
    name with its own reason."""
    from local_stack import wait_for

    client = stack.s3()
    wait_for(lambda: ingest_sensors_deferred(stack), 240, "both ingest sensors to defer", interval=2)
    body = b"not,an,h5ad\n"
    etags = {key: put(client, key, body) for pair in ALIKE for key in pair}
    assert len(set(etags.values())) == 1  # same bytes: only the key tells the uploads apart
    runs = {key: layout.ingest_run_id(key, etag) for key, etag in etags.items()}
    assert len(set(runs.values())) == len(runs)
    for key, run_id in runs.items():
        run = wait_for_run(stack, "helical_finetune", run_id, 600)
        assert run["conf"]["data"] == f"s3://helical/{key}" and run["conf"]["etag"] == etags[key], run["conf"]
        assert run["state"] == "failed" and failed_step(stack, run_id)["task_id"] == "inspect"
        name = key.removeprefix("incoming/")
        note = get_json(client, f"quarantine/{name}.error.json")
        assert note["source"] == f"s3://helical/{key}" and note["moved"] and note["run_id"] == run_id, note
        assert client.get_object(Bucket="helical", Key=f"quarantine/{name}")["Body"].read() == body
    created = {r["dag_run_id"] for r in stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["dag_runs"]}
    assert set(runs.values()) <= created
    if MODE == "docker":
        for key, run_id in runs.items():
            [kept] = docker_ps(f"label=run_id={run_id}", "status=exited")
            [container] = json.loads(docker("inspect", kept))
            labels = container["Config"]["Labels"]
            assert labels["data"] == f"s3://helical/{key}" and labels["etag"] == etags[key], labels
            docker("rm", kept)


def test_gpu_profile_fails_at_once_without_a_gpu_worker_and_runs_once_one_is_up(stack, small_h5ad):
    """No worker consumes queue gpu: check_input fails on its first try with the one-line reason and the
    command that starts one. With a gpu worker started, the same run triggered again chunks on queue cpu and
    fine-tunes and predicts on queue gpu."""
    client = stack.s3()
    put(client, "e2e-faults/small.h5ad", small_h5ad.read_bytes())  # outside incoming/: only these runs read it
    conf = {"data": "s3://helical/e2e-faults/small.h5ad", "profile": "gpu-test", "label_column": "cell_type"}
    trigger(stack, "e2e-no-gpu-worker", conf)
    run = wait_for_run(stack, "helical_finetune", "e2e-no-gpu-worker", 300)
    step = failed_step(stack, "e2e-no-gpu-worker")
    assert run["state"] == "failed" and step["task_id"] == "check_input" and step["try_number"] == 1, step
    log = task_log(stack, "e2e-no-gpu-worker", "check_input", 1)
    assert "no live Celery worker serves queue 'gpu', which profile gpu-test runs on" in log
    assert "docker compose -f docker-compose-airflow.yaml --profile gpu up -d airflow-worker-gpu" in log
    assert not {ti["task_id"] for ti in task_instances(stack, "e2e-no-gpu-worker").values()
                if ti["state"] == "queued"}, "nothing is left waiting in a queue"

    stack.start_worker("gpu")
    trigger(stack, "e2e-gpu-worker", conf)
    run = wait_for_run(stack, "helical_finetune", "e2e-gpu-worker", 1200)
    tis = task_instances(stack, "e2e-gpu-worker")
    assert run["state"] == "success", {k: v["state"] for k, v in tis.items()}
    assert tis["chunk"]["queue"] == "cpu" and tis["chunk"]["state"] == "success"
    for step in ("finetune", "predict"):
        assert tis[f"on_gpu.{step}"]["queue"] == "gpu" and tis[f"on_gpu.{step}"]["state"] == "success"
        assert tis[f"on_cpu.{step}"]["state"] == "skipped"
    assert get_json(client, "runs/e2e-gpu-worker/report.json")["status"] == "succeeded"


@pytest.mark.skipif(MODE != "docker", reason="a memory cap needs a container (HELICAL_E2E_MODE=docker)")
def test_a_runner_killed_at_its_memory_cap_fails_once_naming_the_cap_and_a_larger_profile(stack, small_h5ad):
    """Profile tiny-mem caps runners at 64 MiB, less than the runner needs to start: the kernel kills the
    container (State.OOMKilled), and the step fails without retries, saying which cap and what to pick."""
    client = stack.s3()
    put(client, "e2e-faults/small.h5ad", small_h5ad.read_bytes())
    trigger(stack, "e2e-oom", {"data": "s3://helical/e2e-faults/small.h5ad", "profile": "tiny-mem",
                               "label_column": "cell_type"})
    run = wait_for_run(stack, "helical_finetune", "e2e-oom", 600)
    step = failed_step(stack, "e2e-oom")
    assert run["state"] == "failed" and step["try_number"] == 1, step  # not retried: the same cap would fail
    log = task_log(stack, "e2e-oom", step["task_id"], 1)
    assert "ran out of memory" in log and "profile tiny-mem's memory cap memory_limit=64m" in log
    assert "rerun with a larger profile: cpu-small (memory_limit=8g)" in log
    [kept] = docker_ps("label=run_id=e2e-oom", "status=exited")  # kept for debugging
    [container] = json.loads(docker("inspect", kept))
    assert container["State"]["OOMKilled"] is True and container["HostConfig"]["Memory"] == 64 * 1024**2
    assert "Contents" not in client.list_objects_v2(Bucket="helical", Prefix="quarantine/small")  # input is fine
    docker("rm", kept)
