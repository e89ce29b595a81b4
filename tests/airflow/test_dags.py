"""The DAG files: import cleanly without DB or network, have the promised shape, validate their forms."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DAGS, REPO

PARSE_PROBE = r"""
import json, os, socket, sys, time
calls = []
def refuse(*args, **kwargs):
    calls.append(repr(args[1:] if len(args) > 1 else args))
    raise OSError("network access at parse time")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(sys.argv[1])
print(json.dumps({"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
                  "dags": sorted(bag.dag_ids), "network": calls,
                  "seconds": time.perf_counter() - start}))
"""


def test_dags_parse_without_db_or_network(tmp_path):
    """Parse in a fresh interpreter where every socket call fails, the DB URL points nowhere, and no
    connection or Variable exists: any parse-time lookup would show up as an import error."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody:x@192.0.2.1:1/none",
           "PYTHONPATH": str(DAGS)}
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(DAGS)], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["dags"] == ["helical_embed", "helical_finetune", "helical_ingest"]
    assert result["network"] == []
    assert result["seconds"] < 10


@pytest.mark.parametrize("dag_id", ["helical_embed", "helical_finetune", "helical_ingest"])
def test_dag_conventions(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert Path(dag.fileloc).stem == dag_id
    assert dag.is_paused_upon_creation is False
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    assert "helical" in dag.tags


def test_finetune_shape(dagbag):
    """chunk needs no GPU: one task on queue cpu for every profile; finetune and predict branch per queue."""
    dag = dagbag.dags["helical_finetune"]
    queues = {"cpu", "gpu"}
    expected = {"check_input", "inspect", "chunk", "route", "publish_summary", "quarantine_bad_input"} | {
        f"on_{q}.{step}" for q in queues for step in ("finetune", "predict")}
    assert set(dag.task_ids) == expected
    inspect, chunk = dag.get_task("inspect"), dag.get_task("chunk")
    assert inspect.queue == chunk.queue == "cpu" and chunk.mount_tmp_dir is False and chunk.auto_remove == "never"
    assert inspect.upstream_task_ids == {"check_input"}
    assert inspect.downstream_task_ids == {"chunk", "quarantine_bad_input"}
    assert chunk.downstream_task_ids == {"route", "quarantine_bad_input"}
    for queue in queues:
        finetune, predict = (dag.get_task(f"on_{queue}.{s}") for s in ("finetune", "predict"))
        assert {t.queue for t in (finetune, predict)} == {queue}
        assert finetune.downstream_task_ids == {predict.task_id}
        assert predict.downstream_task_ids == {"publish_summary", "quarantine_bad_input"}
        assert dag.get_task("route").downstream_task_ids >= {finetune.task_id}
        assert finetune.auto_remove == "never"
    assert dag.get_task("publish_summary").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("quarantine_bad_input").trigger_rule == "one_failed"


def test_embed_shape_and_form(dagbag):
    """inspect and chunk on queue cpu, embed per queue; the form offers every model embed runs."""
    from airflow.sdk.definitions.param import ParamValidationError

    dag = dagbag.dags["helical_embed"]
    queues = {"cpu", "gpu"}
    assert set(dag.task_ids) == {"check_input", "inspect", "chunk", "route", "publish_summary",
                                 "quarantine_bad_input"} | {f"on_{q}.embed" for q in queues}
    for queue in queues:
        embed = dag.get_task(f"on_{queue}.embed")
        assert embed.queue == queue and embed.downstream_task_ids == {"publish_summary", "quarantine_bad_input"}
    params = dag.params
    assert params.get_param("model").schema["enum"][0] == "gf-12L-38M-i4096"
    assert "scGPT_CP" in params.get_param("model").schema["enum"]
    assert params.get_param("color").resolve(["donor_id", "sex"]) == ["donor_id", "sex"]
    for name, bad in (("model", "gf-99L-unknown"), ("color", "donor_id"), ("color", [""]), ("color", ["a"] * 9),
                      ("data", "s3://helical/incoming/a.csv")):
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)
    cli = (REPO / "helical_runner" / "cli.py").read_text()
    for name in set(params.keys()) - {"etag"}:
        assert f"--{name.replace('_', '-')}" in cli, f"param {name} has no runner flag of that name"


def test_ingest_shape(dagbag):
    dag = dagbag.dags["helical_ingest"]
    sensor = dag.get_task("wait_for_uploads")
    assert sensor.deferrable is True
    assert sensor.poke_interval <= 5  # uploads must be picked up within 15 s
    assert dag.max_active_runs == 1
    trigger = dag.get_task("trigger_finetune")
    assert trigger.partial_kwargs["trigger_dag_id"] == "helical_finetune"
    assert trigger.partial_kwargs["skip_when_already_exists"] is True


def test_finetune_params_match_runner_flags(dagbag):
    params = dagbag.dags["helical_finetune"].params
    names = set(params.keys())
    assert {"data", "label_column", "model", "profile", "epochs", "precision", "batch_size", "tokens_per_batch",
            "lr", "cells_per_chunk"} <= names
    cli = (REPO / "helical_runner" / "cli.py").read_text()
    for name in names - {"etag"}:
        assert f"--{name.replace('_', '-')}" in cli, f"param {name} has no runner flag of that name"


GOOD = {"data": "s3://helical/incoming/a.h5ad", "label_column": "cell_type", "model": "gf-12L-38M-i4096",
        "profile": "cpu-small", "epochs": 2, "precision": "fp16", "batch_size": 8, "tokens_per_batch": 16384,
        "lr": 1e-4, "cells_per_chunk": 1000, "no_embeddings": True, "etag": None}


@pytest.mark.parametrize("name,value", [
    ("data", "http://example.com/a.h5ad"), ("data", "s3://helical/incoming/a.csv"), ("data", "/etc/passwd.h5ad"),
    ("data", "s3://helical/"), ("label_column", ""), ("model", "bert-base; rm -rf /"), ("model", "gf-99L-unknown"),
    ("profile", "gpu-1000gb"), ("epochs", 0), ("epochs", "two"), ("precision", "fp8"), ("batch_size", -1),
    ("tokens_per_batch", 0), ("lr", 0), ("lr", 5), ("cells_per_chunk", 0),
])
def test_params_reject_bad_values(dagbag, name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    params = dagbag.dags["helical_finetune"].params
    with pytest.raises(ParamValidationError):
        params.get_param(name).resolve(value)


def test_params_accept_good_values_and_defaults(dagbag):
    params = dagbag.dags["helical_finetune"].params
    for name, value in GOOD.items():
        assert params.get_param(name).resolve(value) == value
    for name in ("epochs", "precision", "batch_size", "tokens_per_batch", "lr", "cells_per_chunk", "etag"):
        assert params.get_param(name).resolve(None) is None
    assert params.get_param("data").resolve("/data/datasets/atlas.h5ad")
    assert params.get_param("profile").value == "cpu-small"  # the default of config/profiles.yaml
