"""`make stack` for real: the compose files up on this machine's engine, an upload through the AWS CLI
fine-tuned by runner containers started through the docker-socket-proxy, watched through the REST API and
Prometheus, its model registered in the stack's MLflow as champion; then an unlabelled upload, handed to
helical_annotate and annotated with that champion; then `make stack-down`. The browser half is
test_browser.py; the last test takes the stack down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest
import yaml

from conftest import REPO, RUNNER_PY, compose_containers, docker, make, save_logs, wait_for

sys.path.insert(0, str(REPO / "dags"))
from helical_lib.s3 import ingest_run_id  # noqa: E402 - plain string helpers: no Airflow import

pytestmark = pytest.mark.slow

# Services docker-compose-local.yaml leaves out (no local build) and the GPU extras (`--profile gpu`).
NOT_RUN_HERE = {"cadvisor", "grafana", "dcgm-exporter", "airflow-worker-gpu"}
# worker-targets: with worker hosts (docker-compose-central.yaml), their scrape targets for Prometheus
ONE_SHOT = {"storage-secrets", "minio-init", "monitoring-secrets", "airflow-init", "mlflow-init", "worker-targets"}
# root only for the Docker socket (the proxy and its create filter, every capability dropped), for the
# data folder's ownership (init), or for a new volume's root-owned folder (worker-targets, no capabilities)
ROOT_SERVICES = {"docker-socket-proxy", "docker-api-filter", "airflow-init", "worker-targets"}
RUNNER_STEPS = ("inspect", "chunk", "on_cpu.finetune", "on_cpu.predict")  # inspect and chunk: queue cpu always
REGISTERED_MODEL, CHAMPION = "helical-cell_type", "champion"  # what helical_finetune registers cell_type models as


def compose_config() -> dict:
    done = subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), "compose", "config"], capture_output=True,
                          text=True, check=True, timeout=120)
    return yaml.safe_load(done.stdout)


def by_service() -> dict[str, dict]:
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in compose_containers()}


def test_every_service_runs_and_passes_its_healthcheck(stack):
    services = compose_config()["services"]
    containers = by_service()
    expected = {name for name, spec in services.items() if not spec.get("profiles")}
    assert set(containers) == expected
    assert not NOT_RUN_HERE & set(containers)
    for name in ONE_SHOT & expected:
        state = containers[name]["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), name
    with_healthcheck = {name for name in expected if "healthcheck" in services[name]}
    assert with_healthcheck == expected - ONE_SHOT  # every long-running service has one
    for name in with_healthcheck:
        health = containers[name]["State"]["Health"]
        # healthy, and Docker ran the compose files' own command (it passed at least once)
        declared = [part.replace("$$", "$") for part in services[name]["healthcheck"]["test"]]  # compose's escape
        assert containers[name]["Config"]["Healthcheck"]["Test"] == declared, name
        assert health["Status"] == "healthy", (name, health["Log"][-1:])
        assert any(entry["ExitCode"] == 0 for entry in health["Log"]), (name, health["Log"])
    as_root = {name for name, c in containers.items() if c["Config"]["User"].split(":")[0] in ("", "0", "root")}
    assert as_root == ROOT_SERVICES & expected


@pytest.fixture(scope="module")
def upload_run(stack, data_dir, cells):
    """Upload with the AWS CLI to incoming/; helical_ingest triggers helical_finetune. Watches the engine
    for the run's runner containers while it runs. -> (run, key, containers seen by task id)."""
    key = f"incoming/stack-{int(time.time())}.h5ad"
    url = f"s3://{stack.bucket}/{key}"
    stack.aws("s3", "cp", str(cells), url)

    def triggered():
        runs = stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["dag_runs"]
        return next((r for r in runs if (r.get("conf") or {}).get("data") == url), None)

    run = wait_for(triggered, 180, f"a helical_finetune run for {url}")
    run_id = run["dag_run_id"]
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ids = docker("ps", "-aq", "--filter", "label=app=helical-runner", "--filter", f"label=run_id={run_id}").split()
        # a container that succeeded may be removed between ps and inspect: inspect prints the others
        found = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=60).stdout \
            if ids else ""
        for info in json.loads(found or "[]"):
            seen.setdefault(info["Config"]["Labels"]["task_id"], info)
        run = stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            break
        time.sleep(1)
    return run, key, seen


def test_upload_is_fine_tuned_by_runner_containers_through_the_proxy(stack, upload_run):
    run, key, seen = upload_run
    run_id = run["dag_run_id"]
    assert run["state"] == "success", stack.task_states("helical_finetune", run_id)
    assert set(seen) == set(RUNNER_STEPS)
    for task_id, info in seen.items():
        assert info["Config"]["Labels"] == {**info["Config"]["Labels"], "app": "helical-runner",
                                             "dag_id": "helical_finetune", "task_id": task_id,
                                             "run_id": run_id, "profile": "cpu-small"}
        assert info["Config"]["Image"] == "helical-runner:cpu"
        assert info["Config"]["User"] == stack.env.get("HELICAL_RUNNER_USER", "50000:0")
        # the runners' own network, shared with MinIO and the Pushgateway only (issue 20)
        assert info["HostConfig"]["NetworkMode"] == stack.env.get("HELICAL_RUNNER_NETWORK", "helical-runners")
        data = [m for m in info["Mounts"] if m["Destination"] == "/data"]
        assert [(m["Source"], m["RW"]) for m in data] == [(stack.env["HELICAL_DATA_DIR"], False)]
    # succeeded containers are removed; the proxy created each of them (its HTTP log, 201 Created)
    assert not docker("ps", "-aq", "--filter", f"label=run_id={run_id}").split()
    proxy_log = docker("logs", by_service()["docker-socket-proxy"]["Id"])
    for info in seen.values():
        name = info["Name"].lstrip("/")
        assert re.search(rf" 201 .*POST /v[0-9.]+/containers/create\?name={re.escape(name)}", proxy_log), name
    # the upload was recorded as handed on
    assert key in stack.aws("s3", "ls", f"s3://{stack.bucket}/ledger/", "--recursive")


def test_rest_api_shows_every_task_state(stack, upload_run):
    run_id = upload_run[0]["dag_run_id"]
    tasks = {t["task_id"] for t in stack.get("/api/v2/dags/helical_finetune/tasks")["tasks"]}
    ran = {"check_input", "check_labels", "route", *RUNNER_STEPS, "publish_summary"}
    assert ran < tasks
    # the other queues' branches and the quarantine step are skipped
    assert stack.task_states("helical_finetune", run_id) == {t: "success" if t in ran else "skipped" for t in tasks}


def test_summary_is_published_to_s3(stack, upload_run):
    run_id = upload_run[0]["dag_run_id"]
    plan = stack.plan(run_id)
    summary = json.loads(stack.aws("s3", "cp", f"{plan['run']}/summary.json", "-"))
    assert plan["run"].startswith(f"s3://{stack.bucket}/runs/")
    assert 0 <= summary["accuracy"] <= 1, summary
    files = stack.aws("s3", "ls", f"{plan['run']}/", "--recursive")
    assert "report.json" in files and "predict/predictions.csv" in files


def champion(stack) -> dict:
    """The model version alias `champion` of helical-cell_type names, through MLflow's REST API."""
    return stack.mlflow_api("GET", "registered-models/alias",
                            params={"name": REGISTERED_MODEL, "alias": CHAMPION})["model_version"]


def test_the_fine_tune_is_tracked_and_registered_as_champion_in_the_stacks_mlflow(stack, upload_run):
    """The runner containers logged to the compose stack's MLflow by its service name (MLFLOW_TRACKING_URI from
    the workers): the run, tagged with Airflow's ids, its metrics, and its artifacts in the bucket under mlflow/;
    the fine-tuned model is a version of helical-cell_type holding alias champion (the first on a fresh stack:
    conftest runs the browser's fine-tune after the uploads), and report.json says which."""
    run_id = upload_run[0]["dag_run_id"]
    report = json.loads(stack.aws("s3", "cp", f"{stack.plan(run_id)['run']}/report.json", "-"))
    assert report["tracking"]["status"] == "logged", report["tracking"]
    tracked = stack.mlflow_api("GET", "runs/get", params={"run_id": report["tracking"]["mlflow_run_id"]})["run"]
    tags = {tag["key"]: tag["value"] for tag in tracked["data"]["tags"]}
    assert (tags["airflow.dag_id"], tags["airflow.run_id"]) == ("helical_finetune", run_id), tags
    assert tracked["info"]["status"] == "FINISHED" and tracked["data"]["metrics"], tracked["info"]
    artifacts = tracked["info"]["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/")
    assert "report.json" in stack.aws("s3", "ls", f"s3://{stack.bucket}/mlflow/{artifacts}/", "--recursive")

    registered, version = report["tracking"].get("registered_model") or {}, champion(stack)
    assert (version["name"], version["run_id"]) == (REGISTERED_MODEL, tracked["info"]["run_id"]), version
    assert registered == {**registered, "name": REGISTERED_MODEL, "version": version["version"], "champion": True,
                          "uri": f"models:/{REGISTERED_MODEL}/{version['version']}"}, registered


def test_prometheus_has_the_runs_metrics_and_its_targets_are_up(stack, upload_run):
    runner_run_id = stack.plan(upload_run[0]["dag_run_id"])["run_id"]

    def statuses():
        found = stack.query(f'helical_runner_status{{run_id="{runner_run_id}",status="succeeded"}} == 1')
        return found if {s["metric"]["command"] for s in found} >= {"chunk", "finetune", "predict"} else None

    found = wait_for(statuses, 120, "the run's runner metrics in Prometheus")
    assert {s["metric"]["job"] for s in found} == {"helical_runner"}  # the push group's, kept by honor_labels
    trained = stack.query(f'helical_runner_cells_processed{{run_id="{runner_run_id}",command="finetune"}}')
    assert trained and float(trained[0]["value"][1]) > 0, trained
    # Airflow's own metrics: StatsD from the workers through the statsd-exporter, mapped by mapping.yml
    finished = wait_for(lambda: stack.query('airflow_ti_finish_total{dag_id="helical_finetune",'
                                            'task_id="on_cpu.finetune",state="success"}'), 120,
                        "Airflow's task metrics in Prometheus")
    assert float(finished[0]["value"][1]) >= 1, finished
    health = {}
    for target in stack.targets():  # this host's (test_worker_host.py looks at the worker host's)
        if target["labels"].get("host", "central") == "central":
            health.setdefault(target["labels"]["job"], set()).add(target["health"])
    for job in ("prometheus", "airflow", "pushgateway", "node"):  # airflow: the statsd-exporter
        assert health.get(job) == {"up"}, (job, health)


@pytest.fixture(scope="module")
def unlabelled_upload(stack, upload_run, tmp_path_factory) -> dict:
    """New cells without a cell_type column (their types in expected_cell_type), written by the runner's own
    code and uploaded with the AWS CLI to plain incoming/, as users drop files, after the labelled upload's run
    made its model champion. -> {key, etag, finetune_run (from key and ETag, as helical_ingest names it),
    champion (its version), uploaded_at}"""
    assert upload_run[0]["state"] == "success", "the labelled upload's fine-tune registers the champion first"
    version = champion(stack)["version"]  # the labelled upload's, which annotates these cells
    path = tmp_path_factory.mktemp("unlabelled") / "unlabelled.h5ad"
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(path), "--cells",
                    "300", "--label-column", "expected_cell_type", "--seed", str(int(time.time()) % 1000 + 1)],
                   check=True, capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    key = f"incoming/stack-unlabelled-{int(time.time())}.h5ad"
    uploaded_at = time.time()
    stack.aws("s3", "cp", str(path), f"s3://{stack.bucket}/{key}")
    etag = json.loads(stack.aws("s3api", "head-object", "--bucket", stack.bucket, "--key", key))["ETag"]
    return {"key": key, "etag": etag, "finetune_run": ingest_run_id(key, etag), "champion": version,
            "uploaded_at": uploaded_at}


def test_an_unlabelled_upload_starts_helical_finetune(stack, unlabelled_upload):
    """Uploaded after the labelled one's run succeeded: plain incoming/ routes it to helical_finetune on
    cell_type, allowed to annotate instead (or_annotate)."""
    run_id, url = unlabelled_upload["finetune_run"], f"s3://{stack.bucket}/{unlabelled_upload['key']}"
    run = wait_for(lambda: stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}"), 180,
                   f"helical_ingest to start helical_finetune run {run_id}", interval=2)
    assert run["conf"] == {**run["conf"], "data": url, "label_column": "cell_type", "or_annotate": True}, run["conf"]


def test_an_unlabelled_upload_is_handed_from_helical_finetune_to_helical_annotate(stack, unlabelled_upload):
    run_id = unlabelled_upload["finetune_run"]
    run = stack.wait_for_run("helical_finetune", run_id, timeout=600)
    states = stack.task_states("helical_finetune", run_id)
    assert run["state"] == "success", states
    assert (states["check_labels"], states["annotate_instead"], states["chunk"]) == ("success", "success", "skipped")
    summary = json.loads(stack.aws("s3", "cp", f"s3://{stack.bucket}/runs/{run_id}/summary.json", "-"))
    assert (summary["status"], summary["annotate_run_id"]) == ("handed_over", f"{run_id}__annotate"), summary


def test_the_unlabelled_upload_is_annotated_with_the_champion(stack, unlabelled_upload):
    """helical_annotate resolved alias champion once, to models:/helical-cell_type/<version>, and predicted with
    it: predictions.h5ad beside the summary; the good file is not quarantined for lacking labels."""
    finetune_run = unlabelled_upload["finetune_run"]
    assert stack.task_states("helical_finetune", finetune_run).get("annotate_instead") == "success", \
        "helical_finetune handed nothing over"
    run_id = f"{finetune_run}__annotate"
    run = stack.wait_for_run("helical_annotate", run_id, timeout=900)
    states = stack.task_states("helical_annotate", run_id)
    assert run["state"] == "success", states
    assert {states[t] for t in ("inspect", "chunk", "on_cpu.embed", "on_cpu.predict", "publish_summary")} == \
        {"success"}, states
    prefix = f"s3://{stack.bucket}/runs/{run_id}"
    summary = json.loads(stack.aws("s3", "cp", f"{prefix}/summary.json", "-"))
    assert summary["model_uri"] == f"models:/{REGISTERED_MODEL}/{unlabelled_upload['champion']}", summary
    assert summary["annotated_url"] == f"{prefix}/predict/predictions.h5ad", summary
    assert "predictions.h5ad" in stack.aws("s3", "ls", f"{prefix}/predict/").split()
    quarantined = stack.aws("s3api", "list-objects-v2", "--bucket", stack.bucket, "--prefix", "quarantine/",
                            "--query", "Contents[].Key", "--output", "json")
    name = unlabelled_upload["key"].removeprefix("incoming/").removesuffix(".h5ad")
    assert not [key for key in json.loads(quarantined) or [] if name in key], quarantined
    finetune = stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{finetune_run}")
    print(f"upload to annotated: {seconds(run['end_date']) - unlabelled_upload['uploaded_at']:.0f} s "
          f"(helical_finetune {seconds(finetune['end_date']) - seconds(finetune['start_date']):.0f} s, "
          f"helical_annotate {seconds(run['end_date']) - seconds(run['start_date']):.0f} s)")


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


AFTER_THE_BROWSER = ("test_stack_down_leaves_nothing_behind",)  # conftest runs test_browser.py's tests before it


@pytest.mark.skipif(os.environ.get("HELICAL_STACK_KEEP") == "1", reason="HELICAL_STACK_KEEP=1 keeps the stack up")
def test_stack_down_leaves_nothing_behind(stack):
    networks = [stack.env.get("HELICAL_NETWORK", "helical"), stack.env.get("HELICAL_RUNNER_NETWORK", "helical-runners")]
    save_logs()
    make("stack-down", "make-stack-down.log", timeout=600)
    assert compose_containers() == []
    for network in networks:
        assert not docker("ps", "-aq", "--filter", f"network={network}").split()  # runner containers too
        assert network not in docker("network", "ls", "--format", "{{.Name}}").split()
    assert not docker("volume", "ls", "-q", "--filter", "label=com.docker.compose.project=helical-airflow").split()
