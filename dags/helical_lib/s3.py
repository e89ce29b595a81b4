"""Bucket layout, URL and run-id helpers, and the S3 client of the Airflow connection (resolved at run time)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
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


def safe_id(text: str, limit: int = 120, exact: str | None = None) -> str:
    """A readable name usable as an S3 path segment, a container name and an Airflow run id
    ([A-Za-z0-9._-], at most `limit` characters), injective in what it stands for.

    `text` unchanged when it is already such a name; otherwise accents are dropped (é -> e), other runs of
    characters become "-", and a hash of the exact text (or of `exact`, when text alone does not tell the
    object apart) is appended, so `c v2` and `c++ v2`, or `é-ñ` and `ü-データ`, never share a name."""
    if exact is None and len(text) <= limit and _is_safe(text):
        return text
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("-", ascii_text).strip("-.") or "x"
    digest = hashlib.sha256((text if exact is None else exact).encode()).hexdigest()[:10]
    return f"{cleaned[: limit - 11].rstrip('-.') or 'x'}-{digest}"


def _is_safe(text: str) -> bool:
    return bool(text) and _UNSAFE.search(text) is None and text.strip("-.") == text


def clean_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def dataset_id(data_url: str, etag: str) -> str:
    """chunks/<dataset>/: the file's stem plus its content's ETag, so a re-upload never reuses stale chunks.

    An upload directly under incoming/ with a clean name keeps `<stem>-<etag[:12]>`; any other location
    (a folder under incoming/, a /data path, a name that needs cleaning) also gets a hash of the exact
    URL and ETag, so two objects never share a chunk prefix."""
    name = PurePosixPath(data_url).name
    stem, etag = name.removesuffix(".h5ad"), clean_etag(etag)
    readable = f"{stem}-{etag[:12]}" if etag else stem
    plain = data_url.startswith("s3://") and parse_url(data_url)[1] == f"{INCOMING}{name}"
    return safe_id(readable, limit=100, exact=None if plain else f"{data_url}\n{etag}")


def ingest_run_id(key: str, etag: str) -> str:
    """The helical_finetune run id for one uploaded object: deterministic, so a second trigger is a no-op,
    and injective in the exact key and ETag (safe_id), so no upload is skipped for looking like another."""
    exact = None if key.startswith(INCOMING) else f"{key}\n{etag}"  # incoming/ is the one prefix dropped
    return safe_id(f"ingest__{key.removeprefix(INCOMING)}__{clean_etag(etag)}", limit=200, exact=exact)


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
