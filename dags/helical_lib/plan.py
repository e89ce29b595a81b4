"""What a helical_finetune run works on (its plan) and what it publishes at the end; run on workers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException

from helical_lib import profiles, s3, workers
from helical_lib.quarantine import move_to_quarantine
from helical_lib.settings import Settings

DATA_MOUNT = "/data"  # where the host data folder appears inside runners (and in form URLs)
EXIT_USAGE = 2  # argparse's code for arguments the runner can't take: the same command would fail again
EXIT_SUPERSEDED = 75  # a newer attempt of the step holds its outputs' lease (helical_runner/outputs/fencing.py)
EXIT_BAD_INPUT = 65  # sysexits EX_DATAERR, the runner's code (and error.json's) for a wrong input: never retried


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
        **{name: params.get(name) for name in ("label_column", "model", "epochs", "precision", "batch_size",
                                               "tokens_per_batch", "lr", "cells_per_chunk", "no_embeddings",
                                               "counts", "gene_column", "color")},
    }


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
    report = _read_json(client, f"{plan['run']}/report.json") or {}
    predicted = _read_json(client, f"{plan['run']}/predict/report.json") or {}
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
    }
    _put_json(client, f"{plan['run']}/summary.json", summary)
    return summary


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
