"""Runner steps tracked in a real MLflow tracking server (tests/mlflow_server.py: `mlflow server` with a
SQLite backend store and its artifacts in moto's S3 under mlflow/, served through the server) and models
registered in its registry, as a user sees them through MLflow's REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import BUCKET, http_get, run_cli, wait_for
from mlflow_server import MlflowServer

pytestmark = pytest.mark.slow

AIRFLOW = {"HELICAL_DAG_ID": "helical_finetune", "HELICAL_TASK_ID": "on_cpu.finetune"}
NAME = "helical-cell_type"


@pytest.fixture(scope="module")
def mlflow(s3_server, tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), s3_server, BUCKET).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cells_h5ad(tmp_path_factory):
    """450 cells x 1,000 genes, 3 cell types: three chunks of 150, a few seconds of training per epoch."""
    from helical_runner.data.synthetic import make_h5ad

    return make_h5ad(tmp_path_factory.mktemp("tracked") / "cells.h5ad", n_cells=450, n_genes=1000, n_types=3,
                     genes_per_cell=120, seed=5)


def finetune_args(data: str, output: str, *extra: str) -> list[str]:
    return ["finetune", "--data", data, "--label-column", "cell_type", "--output", output, "--precision", "fp32",
            "--batch-size", "32", "--lr", "2e-3", "--epochs", "2", "--cells-per-chunk", "150", *extra]


def report(s3, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/report.json")["Body"].read())


def runs_of(mlflow, experiment: str, output: str) -> list[dict]:
    experiment_id = mlflow.api("experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    found = mlflow.post("runs/search", {"experiment_ids": [experiment_id],
                                        "filter": f"tags.`helical.output` = '{output}'"})
    return found.get("runs", [])


def history(mlflow, run_id: str, key: str) -> list[int]:
    return [m["step"] for m in mlflow.api("metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])]


def artifacts(mlflow, run_id: str, path: str = "") -> set[str]:
    listed = mlflow.api("artifacts/list", run_id=run_id, **({"path": path} if path else {}))
    return {f["path"] for f in listed.get("files", [])}


def test_a_finetune_is_tracked_registered_and_its_champion_annotates(s3, mlflow, pushgateway, tiny_model,
                                                                    cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/tracked.h5ad")
    data, output = f"s3://{BUCKET}/incoming/tracked.h5ad", f"s3://{BUCKET}/runs/tracked"
    env = {"MLFLOW_TRACKING_URI": mlflow.uri, "HELICAL_RUN_ID": "manual__tracked", "PUSHGATEWAY_URL": pushgateway,
           **AIRFLOW}
    done = run_cli(*finetune_args(data, output), env=env)
    assert done.returncode == 0, done.stderr
    tracked = report(s3, "runs/tracked")["tracking"]
    assert tracked["status"] == "logged", tracked
    assert tracked["registered_model"] == {
        "name": NAME, "version": "1", "uri": f"models:/{NAME}/1", "champion": True,
        "reason": tracked["registered_model"]["reason"]}
    assert "no champion" in tracked["registered_model"]["reason"]
    assert f"MLflow run {tracked['mlflow_run_id']}" in done.stderr  # the task log names the run
    # and so do the metrics a Grafana panel shows: a dashboard leads to the run
    pushed = [line for line in http_get(f"{pushgateway}/metrics").splitlines()
              if line.startswith("helical_runner_mlflow_run_info{") and 'run_id="manual__tracked"' in line]
    assert len(pushed) == 1 and f'mlflow_run_id="{tracked["mlflow_run_id"]}"' in pushed[0], pushed
    assert f'url="{tracked["url"]}"' in pushed[0]

    # one run in the DAG's experiment, with the Airflow ids, the parameters and one loss point per step
    [run] = runs_of(mlflow, "helical_finetune", output)
    assert run["info"]["run_id"] == tracked["mlflow_run_id"] and run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["airflow.run_id"] == "manual__tracked" and tags["airflow.task_id"] == "on_cpu.finetune"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["lr"] == "0.002" and params["model"] == "gf-12L-38M-i4096" and params["label_column"] == "cell_type"
    assert params["data"] == data and params["data_etag"] == report(s3, "runs/tracked")["inputs"]["data"]["etag"]
    steps = report(s3, "runs/tracked")["steps"]
    assert history(mlflow, run["info"]["run_id"], "loss") == list(range(1, steps + 1))
    assert len(history(mlflow, run["info"]["run_id"], "validation_macro_f1")) == 2  # one per epoch
    assert {"model", "report.html", "report.json", "training_curves.png", "confusion_matrix.png"} <= \
        artifacts(mlflow, run["info"]["run_id"])
    assert {"model/classifier.json", "model/model.safetensors"} <= artifacts(mlflow, run["info"]["run_id"], "model")
    # the artifacts are in the bucket, under mlflow/, put there by the tracking server
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("KeyCount", 0) >= 5

    alias = mlflow.api("registered-models/alias", name=NAME, alias="champion")["model_version"]
    assert alias["version"] == "1" and alias["run_id"] == run["info"]["run_id"]
    version_tags = {t["key"]: t["value"] for t in alias["tags"]}
    assert version_tags["base_model"] == "gf-12L-38M-i4096" and float(version_tags["macro_f1"]) >= 0
    assert json.loads(version_tags["classes"]) == report(s3, "runs/tracked")["labels"]

    # a second fine-tune that is not to be promoted: version 2, the champion stays version 1
    again = run_cli(*finetune_args(data, f"{output}-2", "--promote", "never"), env=env)
    assert again.returncode == 0, again.stderr
    second = report(s3, "runs/tracked-2")["tracking"]["registered_model"]
    assert (second["version"], second["champion"], second["reason"]) == ("2", False, "not promoted (promote=never)")
    assert mlflow.api("registered-models/alias", name=NAME, alias="champion")["model_version"]["version"] == "1"

    # predict resolves models:/NAME@champion through the registry: nobody copies a model folder
    annotate_env = {**env, "HELICAL_DAG_ID": "helical_annotate", "HELICAL_TASK_ID": "on_cpu.predict"}
    predicted = run_cli("predict", "--model", f"models:/{NAME}@champion", "--data", data,
                        "--output", f"{output}/annotate", "--precision", "fp32", env=annotate_env)
    assert predicted.returncode == 0, predicted.stderr
    annotated = report(s3, "runs/tracked/annotate")
    assert annotated["model"]["registered"]["version"] == "1" and annotated["accuracy"] is not None
    [predict_run] = runs_of(mlflow, "helical_annotate", f"{output}/annotate")
    assert {p["key"]: p["value"] for p in predict_run["data"]["params"]}["model_version"] == "1"

    missing = run_cli("predict", "--model", f"models:/{NAME}@nosuch", "--data", data, "--output",
                      f"{output}/missing", env=annotate_env)
    assert missing.returncode == 65
    assert missing.stderr.strip().splitlines()[-1] == (
        f"helical-runner: error: models:/{NAME}@nosuch: registered model '{NAME}' has no alias 'nosuch' "
        "(versions: 1, 2)")


def started_finetune(s3, cells_h5ad, name: str, env: dict) -> subprocess.Popen:
    """A fine-tune of incoming/<name>.h5ad into runs/<name>, registering <name>-model, in a child process;
    returned once its first checkpoint is written."""
    s3.upload_file(str(cells_h5ad), BUCKET, f"incoming/{name}.h5ad")
    args = finetune_args(f"s3://{BUCKET}/incoming/{name}.h5ad", f"s3://{BUCKET}/runs/{name}", "--register",
                         f"{name}-model")
    child = subprocess.Popen([sys.executable, "-m", "helical_runner", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        wait_for(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{name}/checkpoint.pt").get("KeyCount", 0),
                 timeout=300, interval=0.1)
    except BaseException:
        child.kill()
        raise
    return child


def test_a_killed_and_resumed_finetune_leaves_one_mlflow_run(s3, mlflow, tiny_model, cells_h5ad):
    data, output = f"s3://{BUCKET}/incoming/killed.h5ad", f"s3://{BUCKET}/runs/killed"
    env = {"MLFLOW_TRACKING_URI": mlflow.uri, **AIRFLOW}
    child = started_finetune(s3, cells_h5ad, "killed", env)
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    [run] = runs_of(mlflow, "helical_finetune", output)
    assert run["info"]["status"] == "RUNNING"  # nobody ended it: the process was killed

    resumed = run_cli(*finetune_args(data, output, "--register", "killed-model"), env={**os.environ, **env})
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stderr and "continuing MLflow run" in resumed.stderr
    [again] = runs_of(mlflow, "helical_finetune", output)
    assert again["info"]["run_id"] == run["info"]["run_id"] and again["info"]["status"] == "FINISHED"
    # the stretch trained twice (after the checkpoint, before the kill) is logged once
    steps = report(s3, "runs/killed")["steps"]
    assert history(mlflow, run["info"]["run_id"], "loss") == list(range(1, steps + 1))
    versions = mlflow.api("model-versions/search", filter="name = 'killed-model'")["model_versions"]
    assert [v["version"] for v in versions] == ["1"]


def test_mlflow_down_at_the_start_catches_up_when_it_answers(s3, mlflow, tiny_model, cells_h5ad):
    output = f"s3://{BUCKET}/runs/outage"
    mlflow.stop()
    child = started_finetune(s3, cells_h5ad, "outage", {"MLFLOW_TRACKING_URI": mlflow.uri, **AIRFLOW})
    try:
        mlflow.start()  # the same port and backend store: the server is back mid-run
        _, stderr = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
        if not mlflow.healthy():
            mlflow.start()
    assert child.returncode == 0, stderr
    assert stderr.count("did not answer") == 1, stderr  # said once, not per call
    tracked = report(s3, "runs/outage")["tracking"]
    assert tracked["status"] == "logged" and tracked["registered_model"]["version"] == "1", tracked
    [run] = runs_of(mlflow, "helical_finetune", output)
    assert history(mlflow, run["info"]["run_id"], "loss") == list(range(1, report(s3, "runs/outage")["steps"] + 1))


def test_mlflow_down_for_the_whole_run_leaves_a_successful_run_that_says_so(s3, tiny_model, cells_h5ad):
    from conftest import free_port

    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/untracked.h5ad")
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = run_cli(*finetune_args(f"s3://{BUCKET}/incoming/untracked.h5ad", f"s3://{BUCKET}/runs/untracked",
                                  "--epochs", "1"),
                   env={"MLFLOW_TRACKING_URI": nowhere, "HELICAL_MLFLOW_WAIT_SECONDS": "3", **AIRFLOW})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line and "MLflow" in line]
    assert len(warnings) == 1 and f"MLflow at {nowhere} did not answer" in warnings[0], warnings  # said once
    assert f"MLflow at {nowhere}: not logged: the run itself" in done.stderr
    tracked = report(s3, "runs/untracked")
    assert tracked["status"] == "succeeded" and tracked["accuracy"] is not None
    assert tracked["tracking"]["status"] == "incomplete"
    assert tracked["tracking"]["not_logged"][0] == "the run itself"
    assert any(item.startswith("model version of helical-cell_type") for item in tracked["tracking"]["not_logged"])
