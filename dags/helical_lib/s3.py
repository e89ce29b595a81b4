"""Bucket layout, URL and run-id helpers, and the S3 client of the Airflow connection (resolved at run time)."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

INCOMING = "incoming/"
CHUNKS = "chunks/"
RUNS = "runs/"
QUARANTINE = "quarantine/"
LEDGER = "ledger/"  # one marker per (key, ETag) already handed to helical_finetune
PREFIXES = (INCOMING, CHUNKS, RUNS, QUARANTINE, LEDGER)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key); ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"'{url}' is not an s3:// URL")
    bucket, _, key = url[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"'{url}' lacks a bucket or a key")
    return bucket, key


def safe_id(text: str, limit: int = 120) -> str:
    """A name usable as an S3 path segment, a container name and an Airflow run id; long names keep a hash."""
    cleaned = _UNSAFE.sub("-", text).strip("-.") or "x"
    if len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{cleaned[: limit - 11]}-{digest}"


def clean_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def dataset_id(data_url: str, etag: str) -> str:
    """chunks/<dataset>/: the file's stem plus its content's ETag, so a re-upload never reuses stale chunks."""
    stem = PurePosixPath(data_url).name.removesuffix(".h5ad")
    return safe_id(f"{stem}-{clean_etag(etag)[:12]}" if etag else stem, limit=100)


def ingest_run_id(key: str, etag: str) -> str:
    """The helical_finetune run id for one uploaded object: deterministic, so a second trigger is a no-op."""
    return safe_id(f"ingest__{key.removeprefix(INCOMING)}__{clean_etag(etag)}", limit=200)


def ledger_key(key: str, etag: str) -> str:
    return f"{LEDGER}{key}.{clean_etag(etag)}"


def connection_env(conn_id: str, endpoint_override: str = "") -> dict[str, str]:
    """S3_ENDPOINT_URL and AWS_* for a runner container, from the Airflow connection (type aws)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    endpoint = endpoint_override or extra.get("endpoint_url") or \
        extra.get("service_config", {}).get("s3", {}).get("endpoint_url", "")
    env = {
        "AWS_ACCESS_KEY_ID": conn.login or extra.get("aws_access_key_id", ""),
        "AWS_SECRET_ACCESS_KEY": conn.password or extra.get("aws_secret_access_key", ""),
        "AWS_DEFAULT_REGION": extra.get("region_name", "us-east-1"),
    }
    if endpoint:
        env["S3_ENDPOINT_URL"] = endpoint
    return env


def client(conn_id: str):
    """A boto3 S3 client for the connection (the amazon provider reads endpoint_url from its extra)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()
