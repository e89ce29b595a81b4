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
    assert result["dags"] == ["helical_annotate", "helical_embed", "helical_finetune", "helical_ingest"]
    assert result["network"] == []
    assert result["seconds"] < 10


@pytest.mark.parametrize("dag_id", ["helical_annotate", "helical_embed", "helical_finetune", "helical_ingest"])
def test_dag_conventions(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert Path(dag.fileloc).stem == dag_id
    assert dag.is_paused_upon_creation is False
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    assert "helical" in dag.tags


def test_finetune_shape(dagbag):
    """chunk needs no GPU: one task on queue cpu for every profile; finetune and predict branch per queue;
    check_labels sends an unlabelled or_annotate input to annotate_instead, which triggers helical_annotate."""
    dag = dagbag.dags["helical_finetune"]
    queues = {"cpu", "cpu-remote", "gpu"}  # the queues of config/profiles.yaml
    expected = {"check_input", "inspect", "check_labels", "chunk", "annotate_instead", "route", "publish_summary",
                "quarantine_bad_input"} | {f"on_{q}.{step}" for q in queues for step in ("finetune", "predict")}
    assert set(dag.task_ids) == expected
    inspect, chunk = dag.get_task("inspect"), dag.get_task("chunk")
    assert inspect.queue == chunk.queue == "cpu" and chunk.mount_tmp_dir is False and chunk.auto_remove == "never"
    assert inspect.upstream_task_ids == {"check_input"}
    assert inspect.downstream_task_ids == {"check_labels", "quarantine_bad_input"}
    assert dag.get_task("check_labels").downstream_task_ids == {"chunk", "annotate_instead"}
    assert chunk.upstream_task_ids == {"check_labels"}
    hand_over = dag.get_task("annotate_instead")
    assert hand_over.trigger_dag_id == "helical_annotate" and hand_over.skip_when_already_exists is True
    assert hand_over.downstream_task_ids == {"publish_summary"}
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
    queues = {"cpu", "cpu-remote", "gpu"}  # the queues of config/profiles.yaml
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


def test_ingest_shape(dagbag):
    dag = dagbag.dags["helical_ingest"]
    sensor = dag.get_task("wait_for_uploads")
    assert sensor.deferrable is True
    assert sensor.poke_interval <= 5  # uploads must be picked up within 15 s
    assert dag.max_active_runs == 1
    for what in ("finetune", "annotate"):
        trigger = dag.get_task(f"trigger_{what}")
        assert trigger.partial_kwargs["trigger_dag_id"] == f"helical_{what}"
        assert trigger.partial_kwargs["skip_when_already_exists"] is True
        assert trigger.upstream_task_ids == {f"runs_to_{what}"} and trigger.downstream_task_ids == {"record"}
    assert dag.get_task("record").trigger_rule == "none_failed"  # nothing routed to a DAG skips its trigger


def test_annotate_shape_and_form(dagbag):
    """inspect and chunk on queue cpu, embed then predict per queue; the form names a registered model and an
    alias or version, and needs no label column."""
    from airflow.sdk.definitions.param import ParamValidationError

    dag = dagbag.dags["helical_annotate"]
    queues = {"cpu", "cpu-remote", "gpu"}  # the queues of config/profiles.yaml
    assert set(dag.task_ids) == {"check_input", "inspect", "chunk", "route", "publish_summary",
                                 "quarantine_bad_input"} | {f"on_{q}.{s}" for q in queues for s in ("embed", "predict")}
    for queue in queues:
        embed, predict = (dag.get_task(f"on_{queue}.{s}") for s in ("embed", "predict"))
        assert embed.queue == predict.queue == queue and embed.downstream_task_ids == {predict.task_id}
        assert predict.downstream_task_ids == {"publish_summary", "quarantine_bad_input"}
    params = dag.params
    assert "label_column" not in params
    assert params.get_param("registered_model").value == "helical-cell_type"
    assert params.get_param("model_alias_or_version").value == "champion"
    assert "scGPT_CP" in params.get_param("model").schema["enum"]
    for name, good in (("registered_model", "helical-author_cell_type.v2"), ("model_alias_or_version", "12"),
                       ("model_alias_or_version", "staging"), ("color", ["donor_id"])):
        assert params.get_param(name).resolve(good) == good
    for name, bad in (("registered_model", "bad name"), ("registered_model", "-x"), ("registered_model", ""),
                      ("registered_model", "a/b"), ("registered_model", "m@champion"), ("registered_model", None),
                      ("registered_model", "x" * 201), ("model_alias_or_version", "champion/1"),
                      ("model_alias_or_version", ""), ("model", "gf-99L-unknown"), ("data", "s3://helical/a.csv")):
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)


# form fields whose runner flag has another name, or that no runner flag takes
FLAG_OF = {"registered_model": "--register", "or_annotate": "--unlabelled-ok", "etag": None,
           "model_alias_or_version": None}  # resolved by check_input into predict's --model=models:/NAME/VERSION


@pytest.mark.parametrize("dag_id", ["helical_annotate", "helical_embed", "helical_finetune"])
def test_params_match_runner_flags(dagbag, dag_id):
    params = dagbag.dags[dag_id].params
    cli = (REPO / "helical_runner" / "cli.py").read_text()
    for name in params.keys():
        flag = FLAG_OF.get(name, f"--{name.replace('_', '-')}")
        assert flag is None or f'"{flag}"' in cli, f"param {name} has no runner flag {flag}"


def test_finetune_params(dagbag):
    params = dagbag.dags["helical_finetune"].params
    assert params.get_param("model").resolve("scGPT_CP") == "scGPT_CP"  # scGPT fine-tunes too (issue 22)
    names = set(params.keys())
    assert {"data", "label_column", "model", "profile", "epochs", "precision", "batch_size", "tokens_per_batch",
            "lr", "cells_per_chunk", "registered_model", "promote", "or_annotate"} <= names


GOOD = {"data": "s3://helical/incoming/a.h5ad", "label_column": "cell_type", "model": "gf-12L-38M-i4096",
        "profile": "cpu-small", "epochs": 2, "precision": "fp16", "batch_size": 8, "tokens_per_batch": 16384,
        "lr": 1e-4, "cells_per_chunk": 1000, "no_embeddings": True, "etag": None,
        "registered_model": "helical-cell_type", "promote": "never", "or_annotate": True}


@pytest.mark.parametrize("name,value", [
    ("data", "http://example.com/a.h5ad"), ("data", "s3://helical/incoming/a.csv"), ("data", "/etc/passwd.h5ad"),
    ("data", "s3://helical/"), ("label_column", ""), ("model", "bert-base; rm -rf /"), ("model", "gf-99L-unknown"),
    ("profile", "gpu-1000gb"), ("epochs", 0), ("epochs", "two"), ("precision", "fp8"), ("batch_size", -1),
    ("tokens_per_batch", 0), ("lr", 0), ("lr", 5), ("cells_per_chunk", 0),
    ("registered_model", "bad name"), ("registered_model", "--output=s3://x"), ("registered_model", "a/b"),
    ("registered_model", ""), ("registered_model", "é"), ("promote", "sometimes"), ("promote", None),
    ("or_annotate", "yes"),
])
def test_params_reject_bad_values(dagbag, name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    params = dagbag.dags["helical_finetune"].params
    with pytest.raises(ParamValidationError):
        params.get_param(name).resolve(value)


def test_params_accept_good_values_and_defaults(dagbag):
    params = dagbag.dags["helical_finetune"].params
    # (before any resolve(): Param.resolve keeps the value it was given)
    assert params.get_param("promote").value == "auto" and params.get_param("or_annotate").value is False
    for name, value in GOOD.items():
        assert params.get_param(name).resolve(value) == value
    for name in ("epochs", "precision", "batch_size", "tokens_per_batch", "lr", "cells_per_chunk", "etag",
                 "registered_model"):
        assert params.get_param(name).resolve(None) is None
    assert params.get_param("data").resolve("/data/datasets/atlas.h5ad")
    assert params.get_param("profile").value == "cpu-small"  # the default of config/profiles.yaml
