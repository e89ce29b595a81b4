"""Uploads to incoming/ become runs on a real Airflow (Celery) that launch the runner: labelled files are
fine-tuned (tracked and registered in a real MLflow server), unlabelled ones annotated with the champion."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import MODE, REPO, RUNNER_PY, docker, wait_for_run
from airflow_demo import failure_report
from helical_lib import s3 as layout

pytestmark = pytest.mark.slow

CREATED = ("queued", "running", "success", "failed")  # a run in any of these states exists
PICKUP_SECONDS = 15  # the promise: an upload starts its run within this long (a little slack below)
SESSION_STARTED = time.time()  # containers created before this belong to earlier test sessions
PRODUCT_DAGS = ("helical_ingest", "helical_finetune", "helical_annotate", "helical_embed")
INGEST_DAGS = ("helical_ingest", "helical_ingest_twin")  # the twin races the real one (scripts/local_stack.py)
# uploads a training run is asked for (incoming/train/<label column>/): without labels they are bad inputs
TRAIN_ONLY = {"missing-label", "single-class"}
UPLOADS: dict[str, str] = {}  # key -> ETag of every upload the first test makes (the race test counts their runs)


def docker_ps(*filters: str) -> list[str]:
    """Names of this session's containers matching the filters (the engine may keep older sessions')."""
    rows = docker("ps", "-a", "--format", "{{.Names}}\t{{.CreatedAt}}", *(f"--filter={f}" for f in filters))
    found = []
    for row in rows.splitlines():
        name, created = row.split("\t")
        when = datetime.strptime(created[:25], "%Y-%m-%d %H:%M:%S %z")  # the engine's local time + offset
        if when.timestamp() >= SESSION_STARTED - 1:
            found.append(name)
    return found


def test_dags_are_unpaused_and_parse(stack):
    def ready():
        dags = {d["dag_id"]: d for d in stack.get("/api/v2/dags")["dags"]}
        return dags if set(PRODUCT_DAGS) <= set(dags) else None

    from local_stack import wait_for

    dags = wait_for(ready, 180, "every DAG in the API", interval=2)
    assert not any(dags[dag_id]["is_paused"] for dag_id in PRODUCT_DAGS)
    assert stack.get("/api/v2/importErrors")["total_entries"] == 0


def test_trigger_form_is_validated_by_the_server(stack):
    """The API (like the UI's form) refuses a run whose conf breaks a Param's schema: no run is created."""
    for conf in ({"data": "http://example.com/x.h5ad"}, {"epochs": 0}, {"profile": "tpu-pod"}):
        response = stack.api("POST", "/api/v2/dags/helical_finetune/dagRuns",
                             json={"logical_date": None, "conf": conf})
        assert response.status_code == 400, (conf, response.status_code, response.text)
    assert stack.get("/api/v2/dags/helical_finetune/dagRuns")["total_entries"] == 0


def task_instances(stack, dag_id: str) -> list[dict]:
    """Every task instance of every run of the DAG (mapped ones one per map index)."""
    return [ti for run in stack.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]
            for ti in stack.get(f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances",
                                limit=100)["task_instances"]]


def ingest_sensors_deferred(stack) -> bool:
    """Both ingest DAGs (helical_ingest and the racing twin) have a sensor waiting in the triggerer."""
    return all(any(ti["state"] == "deferred" for ti in task_instances(stack, dag_id)) for dag_id in INGEST_DAGS)


def failed_step(stack, run_id: str) -> dict:
    tis = stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances")["task_instances"]
    [failed] = [ti for ti in tis if ti["state"] == "failed"]
    return failed


def task_log(stack, run_id: str, task_id: str, try_number: int, dag_id: str = "helical_finetune") -> str:
    return json.dumps(stack.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
                                f"{try_number}", full_content="true"))


def put(client, key: str, body: bytes) -> str:
    return layout.clean_etag(client.put_object(Bucket="helical", Key=key, Body=body)["ETag"])


def get_json(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket="helical", Key=key)["Body"].read())


def test_uploads_end_to_end(stack, h5ad, small_h5ad, bad_files):
    """A good upload is fine-tuned; then every kind of bad upload, one too large and one deleted right after
    it was seen arrive with another good one: each bad one fails once with its one-line reason in the task
    log and is moved to quarantine/ beside <name>.error.json, and the good one is processed regardless."""
    from conftest import INPUT_CAP_BYTES
    from local_stack import wait_for

    client = stack.s3()
    # the sensors must be waiting (deferred) before the upload, so the pickup time is fair
    wait_for(lambda: ingest_sensors_deferred(stack), 240, "both ingest sensors to defer", interval=2)

    good = put(client, "incoming/e2e-cells.h5ad", h5ad.read_bytes())
    uploaded = time.monotonic()
    good_run = layout.ingest_run_id("incoming/e2e-cells.h5ad", good)
    wait_for_run(stack, "helical_finetune", good_run, 60, states=CREATED)
    pickup = time.monotonic() - uploaded
    print(f"\nupload -> helical_finetune run created: {pickup:.1f} s")
    assert pickup <= PICKUP_SECONDS + 5

    bad = {f"{'train/cell_type/' if name in TRAIN_ONLY else ''}{name}.h5ad":
           (put(client, f"incoming/{'train/cell_type/' if name in TRAIN_ONLY else ''}{name}.h5ad", path.read_bytes()),
            reason) for name, (path, reason) in bad_files.items()}
    bad["too-large.h5ad"] = (put(client, "incoming/too-large.h5ad", os.urandom(INPUT_CAP_BYTES + 1)),
                             "over profile cpu-small's cap")
    late_good = put(client, "incoming/e2e-late.h5ad", small_h5ad.read_bytes())
    vanishing = put(client, "incoming/vanishing.h5ad", small_h5ad.read_bytes())  # same bytes, own key and run
    vanishing_run = layout.ingest_run_id("incoming/vanishing.h5ad", vanishing)
    wait_for_run(stack, "helical_finetune", vanishing_run, 120, states=CREATED)
    client.delete_object(Bucket="helical", Key="incoming/vanishing.h5ad")  # seen, then gone before its run reads it

    UPLOADS.update({f"incoming/{name}": etag for name, (etag, _) in bad.items()})
    UPLOADS.update({"incoming/e2e-cells.h5ad": good, "incoming/e2e-late.h5ad": late_good,
                    "incoming/vanishing.h5ad": vanishing})
    for name, etag in (("e2e-cells.h5ad", good), ("e2e-late.h5ad", late_good)):
        run_id = layout.ingest_run_id(f"incoming/{name}", etag)
        run = wait_for_run(stack, "helical_finetune", run_id, 1500)
        tis = {ti["task_id"]: ti for ti in stack.get(
            f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances")["task_instances"]}
        assert run["state"] == "success", (name, {k: v["state"] for k, v in tis.items()})
        assert run["conf"]["data"] == f"s3://helical/incoming/{name}"
        assert tis["on_cpu.finetune"]["state"] == "success" and tis["on_gpu.finetune"]["state"] == "skipped"
        assert tis["quarantine_bad_input"]["state"] == "skipped"
        prefix = f"runs/{run_id}/"
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="helical", Prefix=prefix)["Contents"]}
        assert {prefix + "report.json", prefix + "report.html", prefix + "predict/predictions.csv",
                prefix + "predict/predictions.h5ad", prefix + "predict/report.json", prefix + "predict/report.html",
                prefix + "summary.json"} <= keys
        report = get_json(client, prefix + "report.json")
        assert report["status"] == "succeeded" and report["throughput"]["cells_per_second"] > 0
        summary = get_json(client, prefix + "summary.json")
        assert summary["accuracy"] == report["accuracy"]
        # tracked in MLflow, registered as a version of helical-cell_type (the first of them became champion)
        registered = report["tracking"]["registered_model"]
        assert report["tracking"]["status"] == "logged" and registered["uri"].startswith("models:/helical-cell_type/")
        assert summary["mlflow_run_url"] == report["tracking"]["url"], summary
        assert client.head_object(Bucket="helical", Key=f"incoming/{name}")["ETag"].strip('"') == etag
        if MODE == "docker":
            assert docker_ps(f"label=run_id={run_id}") == [], "runner containers left behind after success"

    outcomes = {}
    for name, (etag, reason) in bad.items():
        run_id = layout.ingest_run_id(f"incoming/{name}", etag)
        run = wait_for_run(stack, "helical_finetune", run_id, 900)
        step = failed_step(stack, run_id)
        outcomes[name] = step["task_id"]
        assert run["state"] == "failed" and step["try_number"] == 1, (name, step)  # bad input: never retried
        log = task_log(stack, run_id, step["task_id"], 1)
        assert reason in log and f"s3://helical/incoming/{name}" in log, (name, step["task_id"])
        # what `make demo` prints for a failed run: the task, its one-line reason, where the full log is
        [line] = failure_report(stack, "helical_finetune", run_id)
        assert line.startswith(f"helical_finetune.{step['task_id']} failed: ") and reason in line.split("\n")[0], line
        if step["task_id"] != "check_input":
            assert "failed: helical-runner: error: " in line, line
        assert Path(line.split("full log: ")[1]).is_file(), line
        note = get_json(client, f"quarantine/{name}.error.json")
        assert reason in note["error"] and "\n" not in note["error"] and note["etag"] == etag, (name, note)
        assert note["moved"] and note["object"] == f"s3://helical/quarantine/{name}"
        moved = client.head_object(Bucket="helical", Key=f"quarantine/{name}")
        assert moved["Metadata"]["helical-source-etag"] == etag and moved["ContentLength"] == (
            INPUT_CAP_BYTES + 1 if name == "too-large.h5ad" else
            bad_files[Path(name).name.removesuffix(".h5ad")][0].stat().st_size)
        assert "Contents" not in client.list_objects_v2(Bucket="helical", Prefix=f"incoming/{name}")
    print("\nbad uploads failed at:", json.dumps(outcomes, indent=1))
    assert outcomes["too-large.h5ad"] == "check_input" and outcomes["not-hdf5.h5ad"] == "inspect"

    run = wait_for_run(stack, "helical_finetune", vanishing_run, 900)
    assert run["state"] == "failed"
    note = get_json(client, "quarantine/vanishing.h5ad.error.json")
    assert note["moved"] is False and ("not found" in note["error"] or "does not exist" in note["error"]), note
    step = failed_step(stack, vanishing_run)
    assert step["try_number"] == 1 and "vanishing.h5ad" in task_log(stack, vanishing_run, step["task_id"], 1)

    if MODE == "docker":
        not_hdf5 = layout.ingest_run_id("incoming/not-hdf5.h5ad", bad["not-hdf5.h5ad"][0])
        kept = docker_ps(f"label=run_id={not_hdf5}", "status=exited")
        assert len(kept) == 1, "the failed runner container is kept for debugging"
        [container] = json.loads(docker("inspect", kept[0]))
        assert container["State"]["ExitCode"] == 65
        assert container["Config"]["User"] == "50000:0"
        assert container["Config"]["Labels"]["dag_id"] == "helical_finetune"
        assert container["Config"]["Labels"]["task_id"] == "inspect"
        assert container["Config"]["Labels"]["profile"] == "cpu-small"
        host = container["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Memory"] == 8 * 1024**3 and host["NetworkMode"] == stack.runner_network  # their own (issue 20)
        data = str(stack.data_dir)
        assert [(m["Target"], m["Source"], m.get("ReadOnly", False)) for m in host["Mounts"]] == [
            ("/data", data, True), ("/data/scratch", f"{data}/scratch", False),
            ("/data/helical", f"{data}/helical", False)]
        leftovers = docker_ps("label=app=helical-runner", "status=exited")
        docker("rm", *leftovers)


def test_each_upload_ran_once_though_two_sensors_raced(stack, bad_files):
    """Two ingest DAGs watch incoming/ (the twin is test-only): both saw the uploads, yet every upload has
    exactly one helical_finetune run and one ledger marker; the losing triggers were skipped."""
    runs = stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["dag_runs"]
    assert len(UPLOADS) == len(bad_files) + 4, "test_uploads_end_to_end did not run first"
    started = sorted(r["dag_run_id"] for r in runs if r["dag_run_id"].startswith("ingest__"))
    assert started == sorted(layout.ingest_run_id(key, etag) for key, etag in UPLOADS.items())
    uploads = list(UPLOADS)
    client = stack.s3()
    ledger = [o["Key"] for o in client.list_objects_v2(Bucket="helical", Prefix="ledger/")["Contents"]]
    assert len(ledger) == len(uploads)

    triggers = {dag_id: [ti["state"] for ti in task_instances(stack, dag_id) if ti["task_id"] == "trigger_finetune"]
                for dag_id in INGEST_DAGS}
    print("\ntrigger_finetune states:", json.dumps(triggers))
    assert all(triggers.values()), "both sensors handed uploads on"
    states = [state for found in triggers.values() for state in found]
    assert states.count("success") == len(uploads) and "failed" not in states
    assert states.count("skipped") >= 1, "no upload was raced: the test proved nothing"


@pytest.mark.skipif(MODE != "docker", reason="kills a runner container: needs HELICAL_E2E_MODE=docker")
def test_same_bytes_are_not_rerun_but_a_new_version_is(stack, h5ad):
    """Re-uploading a processed file changes nothing; new bytes under a quarantined name get their own run,
    and their own quarantine name (the first bad file there is never overwritten)."""
    client = stack.s3()
    before = stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["total_entries"]
    put(client, "incoming/e2e-cells.h5ad", h5ad.read_bytes())  # the same bytes as the first test's upload
    first_bad = client.get_object(Bucket="helical", Key="quarantine/not-hdf5.h5ad")["Body"].read()
    etag = put(client, "incoming/not-hdf5.h5ad", b"still,not,hdf5\n")
    run_id = layout.ingest_run_id("incoming/not-hdf5.h5ad", etag)
    run = wait_for_run(stack, "helical_finetune", run_id, 600)
    assert run["state"] == "failed"
    time.sleep(10)  # two more sensor polls: the re-upload of e2e-cells.h5ad would have started a run by now
    assert stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["total_entries"] == before + 1
    renamed = f"quarantine/not-hdf5.{etag[:12]}.h5ad"
    assert client.get_object(Bucket="helical", Key=renamed)["Body"].read() == b"still,not,hdf5\n"
    assert client.get_object(Bucket="helical", Key="quarantine/not-hdf5.h5ad")["Body"].read() == first_bad
    note = get_json(client, f"{renamed}.error.json")
    assert note["etag"] == etag and "is not a readable .h5ad" in note["error"]
    if MODE == "docker":
        docker("rm", *docker_ps(f"label=run_id={run_id}", "status=exited"))


def test_an_unlabelled_real_file_is_embedded_from_the_form(stack, work_dir):
    """helical_embed on a real CELLxGENE screen with no cell-type column: embeddings.h5ad opens in anndata
    with every cell, its clusters and UMAP; umap.png coloured by a column; the summary names them."""
    real = REPO.parent / "shared" / "real-data" / "cellxgene_schema7_perturb_500x2000.h5ad"
    if not real.is_file():
        pytest.skip(f"real-data fixture {real} is absent")
    client = stack.s3()
    client.put_object(Bucket="helical", Key="datasets/perturb.h5ad", Body=real.read_bytes())  # not incoming/
    response = stack.api("POST", "/api/v2/dags/helical_embed/dagRuns", json={
        "dag_run_id": "e2e-embed", "logical_date": None,
        "conf": {"data": "s3://helical/datasets/perturb.h5ad", "color": ["genetic_perturbation_strategy"]}})
    assert response.status_code == 200, response.text
    run = wait_for_run(stack, "helical_embed", "e2e-embed", 900)
    assert run["state"] == "success", failure_report(stack, "helical_embed", "e2e-embed")
    summary = get_json(client, "runs/e2e-embed/summary.json")
    assert summary["status"] == "succeeded" and summary["cells"] == 500 and summary["clusters"] >= 2
    local = work_dir / "e2e-embeddings.h5ad"
    client.download_file("helical", "runs/e2e-embed/embed/embeddings.h5ad", str(local))
    check = subprocess.run([str(RUNNER_PY), "-c", (
        "import anndata, sys; a = anndata.read_h5ad(sys.argv[1]); "
        "print(a.n_obs, a.obsm['X_geneformer'].shape[1], a.obs['leiden'].notna().all(), a.obsm['X_umap'].shape[1], "
        "'genetic_perturbation_strategy' in a.obs)"), str(local)], capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["500", "64", "True", "2", "True"], check.stderr[-2000:]
    report = get_json(client, "runs/e2e-embed/embed/report.json")
    assert report["colors_missing"] == []
    assert client.get_object(Bucket="helical", Key="runs/e2e-embed/embed/umap.png")["Body"].read(4) == b"\x89PNG"


def test_an_unlabelled_real_upload_is_annotated_with_the_champion(stack, work_dir):
    """A real CELLxGENE screen with no cell_type column, dropped into incoming/ as users do: helical_finetune
    finds no labels and hands it to helical_annotate (nothing quarantined), which embeds it (clusters, UMAP)
    and annotates it with the champion the first test's fine-tune registered, pinned as models:/NAME/VERSION;
    both steps are MLflow runs tagged with the Airflow run, and the task log names them."""
    import httpx

    real = REPO.parent / "shared" / "real-data" / "cellxgene_schema7_perturb_500x2000.h5ad"
    if not real.is_file():
        pytest.skip(f"real-data fixture {real} is absent")
    champion = httpx.get(f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/alias",
                         params={"name": "helical-cell_type", "alias": "champion"}, timeout=30)
    assert champion.status_code == 200, "test_uploads_end_to_end registers the champion first"
    version = champion.json()["model_version"]["version"]

    client = stack.s3()
    etag = put(client, "incoming/new-screen.h5ad", real.read_bytes())
    finetune_run = layout.ingest_run_id("incoming/new-screen.h5ad", etag)
    run = wait_for_run(stack, "helical_finetune", finetune_run, 600)
    assert run["state"] == "success", failure_report(stack, "helical_finetune", finetune_run)
    states = {ti["task_id"]: ti["state"] for ti in stack.get(
        f"/api/v2/dags/helical_finetune/dagRuns/{finetune_run}/taskInstances")["task_instances"]}
    assert states["annotate_instead"] == "success" and states["chunk"] == "skipped", states
    assert get_json(client, f"runs/{finetune_run}/summary.json")["status"] == "handed_over"

    annotate_run = f"{finetune_run}__annotate"
    run = wait_for_run(stack, "helical_annotate", annotate_run, 900)
    assert run["state"] == "success", failure_report(stack, "helical_annotate", annotate_run)
    summary = get_json(client, f"runs/{annotate_run}/summary.json")
    assert summary["model_uri"] == f"models:/helical-cell_type/{version}" and summary["cells"] == 500, summary
    assert "Contents" not in client.list_objects_v2(Bucket="helical", Prefix="quarantine/new-screen")

    local = work_dir / "e2e-annotated.h5ad"
    client.download_file("helical", f"runs/{annotate_run}/predict/predictions.h5ad", str(local))
    check = subprocess.run([str(RUNNER_PY), "-c", (
        "import anndata, sys; a = anndata.read_h5ad(sys.argv[1]); "
        "print(a.n_obs, a.obs['predicted_cell_type'].notna().all(), a.obs['prediction_confidence'].between(0, 1).all(),"
        " a.obs['leiden'].notna().all(), a.obsm['X_umap'].shape[1], 'genetic_perturbation_strategy' in a.obs)"),
        str(local)], capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["500", "True", "True", "True", "2", "True"], check.stderr[-2000:]

    found = httpx.post(f"{stack.mlflow_url}/api/2.0/mlflow/runs/search", timeout=30, json={
        "experiment_ids": [httpx.get(f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name", timeout=30,
                                     params={"experiment_name": "helical_annotate"}).json()["experiment"]["experiment_id"]],
        "filter": f"tags.`airflow.run_id` = '{annotate_run}'"}).json()["runs"]
    commands = sorted(t["value"] for r in found for t in r["data"]["tags"] if t["key"] == "helical.command")
    assert commands == ["embed", "predict"] and all(r["info"]["status"] == "FINISHED" for r in found)
    predict_run = next(r for r in found if {"key": "helical.command", "value": "predict"} in r["data"]["tags"])
    assert f"MLflow run {predict_run['info']['run_id']}" in task_log(stack, annotate_run, "on_cpu.predict", 1,
                                                                       "helical_annotate")
