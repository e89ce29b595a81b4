"""What a runner DAG's run works on (its plan) and what it publishes at the end; run on workers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException

from helical_lib import profiles, registry, s3, workers
from helical_lib.quarantine import move_to_quarantine
from helical_lib.settings import Settings

DATA_MOUNT = "/data"  # where the host data folder appears inside runners (and in form URLs)
EXIT_USAGE = 2  # argparse's code for arguments the runner can't take: the same command would fail again
EXIT_SUPERSEDED = 75  # a newer attempt of the step holds its outputs' lease (helical_runner/outputs/fencing.py)
EXIT_BAD_INPUT = 65  # sysexits EX_DATAERR, the runner's code (and error.json's) for a wrong input: never retried
ANNOTATE_DAG = "helical_annotate"  # where helical_finetune hands an upload without labels (or_annotate)
NO_MODEL = "no registered model yet: embeddings and clusters only"  # helical_annotate without a champion
# what a hand-over passes on from helical_finetune's form: the file's reading choices and the resources
HANDED_OVER = ("profile", "model", "precision", "batch_size", "cells_per_chunk", "counts", "gene_column",
               "registered_model")


class BadInput(AirflowFailException):
    """The input itself is wrong (over the size cap, gone): fail without retries and quarantine it."""


def checked_plan(params: dict, airflow_run_id: str, settings: Settings | None = None, client=None) -> dict:
    """make_plan, and on a bad upload its quarantine (the reason beside it) before the task fails; then a
    live worker must serve the plan's queue (helical_lib.workers: NoWorker, no retries, if none does)."""
    settings = settings or Settings.from_env()
    try:
        plan = make_plan(params, airflow_run_id, settings, client)
    except BadInput as exc:
        if params.get("etag"):  # an upload helical_ingest saw; a mistyped URL from the form has nothing to keep
            note = move_to_quarantine(client or s3.client(settings.s3_conn_id), settings.bucket, params["data"],
                                      params["etag"], {"error": str(exc), "exit_code": EXIT_BAD_INPUT,
                                                       "command": "check_input", "run_id": airflow_run_id})
            raise BadInput(f"{exc} (quarantined: {note['object'] or 'nothing left to move'})") from None
        raise
    workers.require_worker(plan["queue"], plan["profile"])
    return plan


def make_plan(params: dict, airflow_run_id: str, settings: Settings | None = None, client=None) -> dict:
    """Check the input exists, matches the triggering ETag and fits the profile's input cap."""
    settings = settings or Settings.from_env()
    try:
        profile = profiles.get(params.get("profile"))
    except profiles.ProfileError as exc:
        raise AirflowFailException(str(exc)) from None
    data = params["data"]
    if data.startswith("s3://"):
        etag, size = _head_s3(data, settings, client)
    else:
        etag, size = _stat_local(data, settings)
    if params.get("etag") and s3.clean_etag(params["etag"]) != etag:
        raise AirflowFailException(f"{data} changed since it was uploaded (ETag {etag}, expected "
                                   f"{s3.clean_etag(params['etag'])}); its new version gets its own run")
    cap = profiles.parse_size(profile["max_input_bytes"])
    if size > cap:
        raise BadInput(f"{data} is {size} bytes, over profile {profile['name']}'s cap "
                                   f"max_input_bytes={profile['max_input_bytes']}: pick a larger profile")
    run_id = s3.safe_id(airflow_run_id, limit=200)
    bucket = settings.bucket
    return {
        "data": data, "etag": etag, "size": size, "run_id": run_id, "profile": profile["name"],
        "queue": profile["queue"], "chunks": f"s3://{bucket}/{s3.CHUNKS}{s3.dataset_id(data, etag)}",
        "run": f"s3://{bucket}/{s3.RUNS}{run_id}",
        # the model predict uses: the one this run's finetune writes, unless helical_annotate pins a registered
        # version here (annotation_plan); None skips predict
        "model_uri": f"s3://{bucket}/{s3.RUNS}{run_id}/model",
        **{name: params.get(name) for name in ("label_column", "model", "epochs", "precision", "batch_size",
                                               "tokens_per_batch", "lr", "cells_per_chunk", "no_embeddings",
                                               "counts", "gene_column", "color", "registered_model", "promote",
                                               "or_annotate")},
    }


def annotation_plan(plan: dict, params: dict, settings: Settings | None = None) -> dict:
    """helical_annotate's plan: the registered model pinned as models:/NAME/VERSION for the whole run (an
    alias resolved once, so a champion that moves mid-run changes nothing), or None when the form's default
    (helical-cell_type@champion) doesn't exist yet; predict also gets the embed step's clusters and UMAP.

    A model the user named that doesn't resolve fails at once (registry.ModelNotFound); an unreachable MLflow
    raises RuntimeError, which Airflow retries."""
    settings = settings or Settings.from_env()
    name = params.get("registered_model") or registry.DEFAULT_NAME
    which = str(params.get("model_alias_or_version") or registry.CHAMPION)
    named = (name, which) != (registry.DEFAULT_NAME, registry.CHAMPION)
    model_uri = registry.resolve(settings.mlflow_tracking_uri, name, which, required=named)
    print(f"registered model {name}@{which}: {model_uri or NO_MODEL}")
    return {**plan, "registered_model": name, "model_uri": model_uri,
            "embeddings": f"{plan['run']}/embed/embeddings.h5ad"}


def labelled(plan: dict, client) -> bool:
    """Did inspect find the label column (2+ classes)? inspect.json's `labelled`, written under the run by
    `helical-runner inspect --unlabelled-ok`; a file without that field was inspected with its labels required."""
    return _inspected(plan, client).get("labelled") is not False


def _inspected(plan: dict, client) -> dict:
    found = _read_json(client, f"{plan['run']}/inspect.json")
    if found is None:
        raise RuntimeError(f"{plan['run']}/inspect.json is missing: inspect has not written it (yet)")
    return found


def handover(plan: dict) -> tuple[str, dict]:
    """(run id, conf) of the helical_annotate run an unlabelled helical_finetune input is handed to: the same
    data and ETag, the run id derived from this run's (a retry or a second trigger is a no-op)."""
    conf = {"data": plan["data"], "etag": plan["etag"],
            **{name: plan[name] for name in HANDED_OVER if plan.get(name) not in (None, "")}}
    return s3.safe_id(f"{plan['run_id']}__annotate", limit=200), conf


def _head_s3(url: str, settings: Settings, client) -> tuple[str, int]:
    from botocore.exceptions import ClientError

    bucket, key = s3.parse_url(url)
    client = client or s3.client(settings.s3_conn_id)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket", "403"):
            raise BadInput(f"input {url} not found (deleted after it was uploaded?)") from None
        raise
    return s3.clean_etag(head.get("ETag")), int(head["ContentLength"])


def _stat_local(path: str, settings: Settings) -> tuple[str, int]:
    """A /data/... path is checked in the host data folder, which workers mount at the same host path."""
    if not path.startswith(f"{DATA_MOUNT}/") or ".." in Path(path).parts:
        raise AirflowFailException(f"{path} is not an s3:// URL or a path under {DATA_MOUNT}/")
    local = Path(settings.data_dir) / path.removeprefix(f"{DATA_MOUNT}/")
    try:
        stat = local.stat()
    except OSError:
        raise BadInput(f"input {path} not found (looked in {local})") from None
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16], stat.st_size


def _read_json(client, url: str) -> dict | None:
    bucket, key = s3.parse_url(url)
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def summarise(plan: dict, settings: Settings | None = None, client=None) -> dict:
    """The run's headline figures, from the runner's reports, written next to them as summary.json."""
    settings = settings or Settings.from_env()
    client = client or s3.client(settings.s3_conn_id)
    if plan.get("or_annotate"):
        inspected = _inspected(plan, client)
        if inspected.get("labelled") is False:
            return _handed_over_summary(plan, inspected, client)
    report = _read_json(client, f"{plan['run']}/report.json") or {}
    predicted = _read_json(client, f"{plan['run']}/predict/report.json") or {}
    registered = (report.get("tracking") or {}).get("registered_model") or {}
    summary = {
        "run_id": plan["run_id"], "data": plan["data"], "etag": plan["etag"], "profile": plan["profile"],
        "status": report.get("status", "missing"),
        "report_url": f"{plan['run']}/report.json",
        "report_html_url": f"{plan['run']}/report.html",
        "prediction_report_html_url": f"{plan['run']}/predict/report.html",
        "predictions_url": f"{plan['run']}/predict/predictions.csv",
        "annotated_url": f"{plan['run']}/predict/predictions.h5ad",
        "accuracy": report.get("accuracy"),
        "macro_f1": report.get("macro_f1"),
        "cells_per_second": (report.get("throughput") or {}).get("cells_per_second"),
        "steps": report.get("steps"),
        "prediction_accuracy": predicted.get("accuracy"),
        "prediction_macro_f1": predicted.get("macro_f1"),
        "mlflow_run_url": _mlflow_run_url(report),
        "prediction_mlflow_run_url": _mlflow_run_url(predicted),
        "registered_model": registered.get("name"),
        "model_version": registered.get("version"),
        "model_uri": registered.get("uri"),
        "champion": registered.get("champion"),
        "promotion": registered.get("reason"),
    }
    _put_json(client, f"{plan['run']}/summary.json", summary)
    return summary


def _handed_over_summary(plan: dict, inspected: dict, client) -> dict:
    run_id, _ = handover(plan)
    summary = {
        "run_id": plan["run_id"], "data": plan["data"], "etag": plan["etag"], "profile": plan["profile"],
        "status": "handed_over", "labelled": False, "annotate_dag_id": ANNOTATE_DAG, "annotate_run_id": run_id,
        "annotate_summary_url": f"{plan['run'].rsplit('/', 1)[0]}/{run_id}/summary.json",
        "note": f"{inspected.get('unlabelled') or 'no usable label column ' + str(plan.get('label_column'))}: "
                f"handed to {ANNOTATE_DAG} run {run_id}",
        "inspect_url": f"{plan['run']}/inspect.json",
    }
    _put_json(client, f"{plan['run']}/summary.json", summary)
    return summary


def _mlflow_run_url(report: dict) -> str | None:
    """The step's MLflow run page, from its report.json (`tracking.url`); None when it wasn't tracked."""
    return (report.get("tracking") or {}).get("url")


def summarise_embedding(plan: dict, settings: Settings | None = None, client=None) -> dict:
    """helical_embed's headline figures, from the embed step's report, written as runs/<run_id>/summary.json."""
    settings = settings or Settings.from_env()
    client = client or s3.client(settings.s3_conn_id)
    prefix = f"{plan['run']}/embed"
    report = _read_json(client, f"{prefix}/report.json") or {}
    clusters = report.get("clusters") or {}
    summary = {
        "run_id": plan["run_id"], "data": plan["data"], "etag": plan["etag"], "profile": plan["profile"],
        "model": (report.get("model") or {}).get("name", plan.get("model")),
        "status": report.get("status", "missing"),
        "report_html_url": f"{prefix}/report.html",
        "embeddings_url": f"{prefix}/embeddings.h5ad",
        "umap_url": f"{prefix}/umap.png",
        "cells": (report.get("cells") or {}).get("embedded"),
        "clusters": clusters.get("clusters"),
        "cells_per_second": report.get("cells_per_second"),
    }
    _put_json(client, f"{plan['run']}/summary.json", summary)
    return summary


def summarise_annotation(plan: dict, settings: Settings | None = None, client=None) -> dict:
    """helical_annotate's summary, from the embed and predict steps' reports, as runs/<run_id>/summary.json:
    where the annotated cells are, the report pages, the MLflow runs and the registered model used."""
    settings = settings or Settings.from_env()
    client = client or s3.client(settings.s3_conn_id)
    embed, predict = f"{plan['run']}/embed", f"{plan['run']}/predict"
    annotated = bool(plan.get("model_uri"))  # else predict was skipped: no registered model yet
    embedded = _read_json(client, f"{embed}/report.json") or {}
    predicted = (_read_json(client, f"{predict}/report.json") or {}) if annotated else {}
    summary = {
        "run_id": plan["run_id"], "data": plan["data"], "etag": plan["etag"], "profile": plan["profile"],
        "status": (predicted if annotated else embedded).get("status", "missing"),
        "model_uri": plan.get("model_uri"),
        "embedding_model": (embedded.get("model") or {}).get("name", plan.get("model")),
        "annotated_url": f"{predict}/predictions.h5ad" if annotated else None,
        "predictions_url": f"{predict}/predictions.csv" if annotated else None,
        "embeddings_url": f"{embed}/embeddings.h5ad",
        "umap_url": f"{embed}/umap.png",
        "report_html_url": f"{embed}/report.html",
        "prediction_report_html_url": f"{predict}/report.html" if annotated else None,
        "mlflow_run_url": _mlflow_run_url(embedded),
        "prediction_mlflow_run_url": _mlflow_run_url(predicted),
        "model_url": registry.version_page(settings.mlflow_ui_url or settings.mlflow_tracking_uri,
                                           plan.get("model_uri")),
        "cells": (embedded.get("cells") or {}).get("embedded"),
        "clusters": (embedded.get("clusters") or {}).get("clusters"),
        "note": None if annotated else NO_MODEL,
    }
    _put_json(client, f"{plan['run']}/summary.json", summary)
    return summary


def _put_json(client, url: str, body: dict) -> None:
    bucket, key = s3.parse_url(url)
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body, indent=1).encode(), ContentType="application/json")


def quarantine(plan: dict, settings: Settings | None = None, client=None) -> dict | None:
    """After a failed step: if a runner said the input is bad (exit code 65 in an error.json), move the
    upload to quarantine/ with the runner's reason (helical_lib.quarantine); a transient failure
    quarantines nothing."""
    settings = settings or Settings.from_env()
    client = client or s3.client(settings.s3_conn_id)
    for prefix in (plan["chunks"], plan["run"], f"{plan['run']}/predict", f"{plan['run']}/embed"):
        found = _read_json(client, f"{prefix}/error.json")
        if found and found.get("exit_code") == EXIT_BAD_INPUT:
            reason = {k: found.get(k) for k in ("error", "exit_code", "command")}
            return move_to_quarantine(client, settings.bucket, plan["data"], plan["etag"],
                                      {**reason, "run_id": plan["run_id"], "error_url": f"{prefix}/error.json"})
    return None
