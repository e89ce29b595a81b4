"""Unlabelled uploads get annotated: the upload routing rule, helical_finetune's hand-over to helical_annotate
(or_annotate), the new runner flags, and the summaries' MLflow fields (S3 is moto in-process)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException, DagRunTriggerException

from helical_lib import ingest, s3
from helical_lib.pipeline import HandOverOperator
from helical_lib.plan import NO_MODEL, handover, labelled, make_plan, summarise, summarise_annotation
from helical_lib.runner import RunnerOperator, container_kwargs, runner_command
from helical_lib.settings import Settings

SETTINGS = Settings.from_env({"HELICAL_DATA_DIR": "/nonexistent", "HELICAL_MLFLOW_UI_URL": "http://mlflow.ui"})
PLAN = {"data": "s3://helical/incoming/atlas.h5ad", "etag": "abc", "size": 10, "run_id": "ingest__atlas.h5ad__abc",
        "profile": "cpu-small", "queue": "cpu", "chunks": "s3://helical/chunks/atlas-abc",
        "run": "s3://helical/runs/ingest__atlas.h5ad__abc", "label_column": "cell_type", "model": "gf-12L-38M-i4096",
        "model_uri": "s3://helical/runs/ingest__atlas.h5ad__abc/model"}


@pytest.mark.parametrize("key,dag_id,conf", [
    ("incoming/train/cell_type/a.h5ad", "helical_finetune", {"label_column": "cell_type"}),
    ("incoming/train/author_cell_type/batch 2/a.h5ad", "helical_finetune", {"label_column": "author_cell_type"}),
    ("incoming/train/a/b/c.h5ad", "helical_finetune", {"label_column": "a"}),  # the first folder names the column
    ("incoming/train/--output=x/a.h5ad", "helical_finetune", {"label_column": "--output=x"}),  # a value, see runner
    ("incoming/annotate/a.h5ad", "helical_annotate", {}),
    ("incoming/annotate/sub/x.h5ad", "helical_annotate", {}),
    ("incoming/annotate/train/cell_type/x.h5ad", "helical_annotate", {}),
    # plain uploads, and train/ keys that name no usable label column: cell_type, or annotated without it
    ("incoming/a.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
    ("incoming/sub dir/a.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
    ("incoming/train//x.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
    ("incoming/train/x.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
    ("incoming/train/" + "c" * 201 + "/x.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
    ("incoming/annotate.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
    ("incoming/training/x.h5ad", "helical_finetune", {"label_column": "cell_type", "or_annotate": True}),
])
def test_uploads_are_routed_by_where_they_were_put(key, dag_id, conf):
    assert ingest.route(key) == (dag_id, conf)


@pytest.mark.parametrize("key", ["incoming/train/cell_type/a.csv", "incoming/annotate/a.h5ad.txt", "incoming/a.H5AD",
                                 "elsewhere/a.h5ad", "incoming/annotate/"])
def test_what_is_not_an_upload_is_not_routed(key):
    assert ingest.route(key) is None


def test_trigger_requests_per_dag_keep_the_run_id_rule(dagbag):
    """Each DAG gets the requests routed to it; run ids stay key + ETag, and every conf passes the DAG's form."""
    objects = [{"key": key, "etag": "e1"} for key in ("incoming/a.h5ad", "incoming/train/donor/b.h5ad",
                                                     "incoming/annotate/c.h5ad", "incoming/notes.txt")]
    finetune = ingest.runs_to_start(objects, "helical", "helical_finetune")
    annotate = ingest.runs_to_start(objects, "helical", "helical_annotate")
    assert [r["trigger_run_id"] for r in finetune] == [s3.ingest_run_id("incoming/a.h5ad", "e1"),
                                                       s3.ingest_run_id("incoming/train/donor/b.h5ad", "e1")]
    assert finetune[0]["conf"] == {"data": "s3://helical/incoming/a.h5ad", "etag": "e1", "label_column": "cell_type",
                                   "or_annotate": True}
    assert finetune[1]["conf"]["label_column"] == "donor" and "or_annotate" not in finetune[1]["conf"]
    assert annotate == [{"trigger_run_id": s3.ingest_run_id("incoming/annotate/c.h5ad", "e1"),
                         "conf": {"data": "s3://helical/incoming/annotate/c.h5ad", "etag": "e1"}}]
    for dag_id, requests in (("helical_finetune", finetune), ("helical_annotate", annotate)):
        params = dagbag.dags[dag_id].params
        for name, value in (item for request in requests for item in request["conf"].items()):
            assert copy.deepcopy(params.get_param(name)).resolve(value) == value  # the dagbag is shared


def test_runner_commands_for_tracking_registry_and_annotation():
    assert runner_command("inspect", PLAN)[-1] == "--run-id=ingest__atlas.h5ad__abc"
    assert runner_command("inspect", {**PLAN, "or_annotate": True})[-1] == "--unlabelled-ok"
    assert not any(a.startswith("--label-column") for a in runner_command("inspect", {**PLAN, "label_column": None}))
    finetune = runner_command("finetune", {**PLAN, "registered_model": "helical-donor", "promote": "never"})
    assert "--register=helical-donor" in finetune and "--promote=never" in finetune
    assert not any(a.startswith("--register") for a in runner_command("finetune", PLAN))  # the runner's default
    assert runner_command("predict", PLAN)[1] == "--model=s3://helical/runs/ingest__atlas.h5ad__abc/model"
    annotating = {**PLAN, "model_uri": "models:/helical-cell_type/3",
                  "embeddings": "s3://helical/runs/r/embed/embeddings.h5ad"}
    assert runner_command("predict", annotating)[:5] == [
        "predict", "--model=models:/helical-cell_type/3", "--data=s3://helical/chunks/atlas-abc/manifest.json",
        "--output=s3://helical/runs/ingest__atlas.h5ad__abc/predict", "--embeddings=s3://helical/runs/r/embed/embeddings.h5ad"]


def test_predict_is_skipped_without_a_registered_model(s3_conn, monkeypatch):
    monkeypatch.setenv("HELICAL_DATA_DIR", "/srv/data")
    op = RunnerOperator(task_id="predict", step="predict", image="placeholder", queue="cpu")
    ti = SimpleNamespace(xcom_pull=lambda task_ids: {**PLAN, "model_uri": None}, try_number=1)
    with pytest.raises(AirflowSkipException, match=NO_MODEL):
        op.configure({"ti": ti})


def test_runners_get_the_tracking_server():
    ids = dict(dag_id="helical_annotate", task_id="on_cpu.embed", run_id="r", try_number=1, s3_env={})
    from helical_lib import profiles

    env = container_kwargs(profiles.get("cpu-small"), SETTINGS, **ids)["environment"]
    assert "MLFLOW_TRACKING_URI" not in env and env["HELICAL_MLFLOW_UI_URL"] == "http://mlflow.ui"
    tracked = Settings.from_env({"HELICAL_DATA_DIR": "/d", "MLFLOW_TRACKING_URI": "http://10.0.0.1:5000"})
    env = container_kwargs(profiles.get("cpu-small"), tracked, **ids)["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000" and "HELICAL_MLFLOW_UI_URL" not in env
    assert env["HELICAL_DAG_ID"] == "helical_annotate"  # the runner's experiment


def test_the_plan_carries_the_new_form_fields(moto_s3):
    moto_s3.put_object(Bucket="helical", Key="incoming/atlas.h5ad", Body=b"x")
    plan = make_plan({"data": "s3://helical/incoming/atlas.h5ad", "label_column": "cell_type", "profile": None,
                      "registered_model": "helical-x", "promote": "always", "or_annotate": True}, "r1", SETTINGS)
    assert plan["model_uri"] == "s3://helical/runs/r1/model"  # predict's default: the run's own model
    assert (plan["registered_model"], plan["promote"], plan["or_annotate"]) == ("helical-x", "always", True)


def inspected(client, plan: dict, **found) -> None:
    bucket, key = s3.parse_url(f"{plan['run']}/inspect.json")
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps({"cells": 10, **found}))


def test_an_unlabelled_upload_is_handed_to_helical_annotate(moto_s3):
    plan = {**PLAN, "or_annotate": True, "profile": "cpu-large", "counts": "raw", "gene_column": None,
            "registered_model": None}
    with pytest.raises(RuntimeError, match="inspect.json is missing"):
        labelled(plan, moto_s3)
    inspected(moto_s3, plan, labelled=True)
    assert labelled(plan, moto_s3)
    inspected(moto_s3, plan)  # an inspect that required its labels says nothing: they were there
    assert labelled(plan, moto_s3)
    inspected(moto_s3, plan, labelled=False)
    assert not labelled(plan, moto_s3)

    run_id, conf = handover(plan)
    assert run_id == "ingest__atlas.h5ad__abc__annotate"
    assert conf == {"data": PLAN["data"], "etag": "abc", "profile": "cpu-large", "model": "gf-12L-38M-i4096",
                    "counts": "raw"}
    op = HandOverOperator(task_id="annotate_instead")
    ti = SimpleNamespace(xcom_pull=lambda task_ids: plan)
    with pytest.raises(DagRunTriggerException) as info:
        op.execute({"ti": ti})
    trigger = info.value
    assert (trigger.trigger_dag_id, trigger.dag_run_id, trigger.conf) == ("helical_annotate", run_id, conf)
    assert trigger.skip_when_already_exists is True and trigger.wait_for_completion is False

    summary = summarise(plan, SETTINGS, moto_s3)
    assert summary["status"] == "handed_over" and summary["annotate_run_id"] == run_id
    assert summary["annotate_summary_url"] == f"s3://helical/runs/{run_id}/summary.json"
    assert summary["note"] == f"no usable label column cell_type: handed to helical_annotate run {run_id}"
    inspected(moto_s3, plan, labelled=False, unlabelled="obs has no column 'cell_type'")
    assert summarise(plan, SETTINGS, moto_s3)["note"].startswith("obs has no column 'cell_type': handed to")


def test_handover_run_ids_stay_apart():
    """Derived from the finetune run's id (itself from key + ETag): injective, never the finetune run's own."""
    ids = {handover({**PLAN, "run_id": run_id})[0] for run_id in ("a", "a__annotate", "x" * 200, "x" * 199 + "y")}
    assert len(ids) == 4 and all(len(i) <= 200 for i in ids)


def test_finetune_summary_names_the_mlflow_run_and_the_registered_version(moto_s3):
    tracking = {"mlflow_run_id": "abc123", "experiment_id": "4", "status": "logged",
                "url": "http://mlflow.ui/#/experiments/4/runs/abc123",
                "registered_model": {"name": "helical-cell_type", "version": "2", "uri": "models:/helical-cell_type/2",
                                     "champion": True, "reason": "champion: macro-F1 0.91 beats champion version 1's"}}
    moto_s3.put_object(Bucket="helical", Key="runs/r1/report.json", Body=json.dumps(
        {"status": "succeeded", "macro_f1": 0.91, "tracking": tracking}))
    plan = {**PLAN, "run_id": "r1", "run": "s3://helical/runs/r1"}
    summary = summarise(plan, SETTINGS, moto_s3)
    assert summary["mlflow_run_url"] == tracking["url"] and summary["prediction_mlflow_run_url"] is None
    assert (summary["registered_model"], summary["model_version"], summary["champion"]) == (
        "helical-cell_type", "2", True)
    assert summary["model_uri"] == "models:/helical-cell_type/2" and summary["promotion"].startswith("champion:")
    moto_s3.put_object(Bucket="helical", Key="runs/r1/report.json", Body=json.dumps({"status": "succeeded"}))
    untracked = summarise(plan, SETTINGS, moto_s3)
    assert untracked["mlflow_run_url"] is None and untracked["registered_model"] is None


def test_annotation_summary_with_and_without_a_registered_model(moto_s3):
    run = "s3://helical/runs/r3"
    moto_s3.put_object(Bucket="helical", Key="runs/r3/embed/report.json", Body=json.dumps(
        {"status": "succeeded", "model": {"name": "gf-12L-38M-i4096"}, "cells": {"embedded": 300},
         "clusters": {"clusters": 5}, "tracking": {"url": "http://mlflow.ui/#/experiments/7/runs/e1"}}))
    plan = {**PLAN, "run_id": "r3", "run": run, "model_uri": None}
    summary = summarise_annotation(plan, SETTINGS, moto_s3)
    assert summary["note"] == NO_MODEL and summary["status"] == "succeeded" and summary["model_uri"] is None
    assert summary["annotated_url"] is None and summary["embeddings_url"] == f"{run}/embed/embeddings.h5ad"
    assert summary["mlflow_run_url"] == "http://mlflow.ui/#/experiments/7/runs/e1"
    assert (summary["cells"], summary["clusters"]) == (300, 5)

    moto_s3.put_object(Bucket="helical", Key="runs/r3/predict/report.json", Body=json.dumps(
        {"status": "succeeded", "tracking": {"url": "http://mlflow.ui/#/experiments/7/runs/p1"}}))
    summary = summarise_annotation({**plan, "model_uri": "models:/helical-cell_type/2"}, SETTINGS, moto_s3)
    assert summary["note"] is None and summary["model_uri"] == "models:/helical-cell_type/2"
    assert summary["annotated_url"] == f"{run}/predict/predictions.h5ad"
    assert summary["prediction_report_html_url"] == f"{run}/predict/report.html"
    assert summary["prediction_mlflow_run_url"] == "http://mlflow.ui/#/experiments/7/runs/p1"
    assert summary["model_url"] == "http://mlflow.ui/#/models/helical-cell_type/versions/2"
    stored = json.loads(moto_s3.get_object(Bucket="helical", Key="runs/r3/summary.json")["Body"].read())
    assert stored == summary
