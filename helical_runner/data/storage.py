"""Inputs and outputs as URLs: `s3://bucket/key` (MinIO/S3) or local paths, behind one small API.

The S3 endpoint comes from `S3_ENDPOINT_URL` and credentials from the usual `AWS_*` variables. Every
S3 call is retried with exponential backoff for up to `S3_RETRY_SECONDS` (default 120 s) so a short
MinIO restart is ridden out; after that the call fails with one clear line.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from helical_runner.errors import InputError, UnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """An object or prefix: `s3://bucket/key` or a local filesystem path."""

    url: str

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.url[5:].split("/", 1)[0]

    @property
    def key(self) -> str:
        parts = self.url[5:].split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def path(self) -> Path:
        return Path(self.url[7:] if self.url.startswith("file://") else self.url)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> "Location":
        base = self.url.rstrip("/")
        return Location("/".join([base, *(p.strip("/") for p in parts)]))

    def __str__(self) -> str:
        return self.url


def parse(url: str | Location) -> Location:
    if isinstance(url, Location):
        return url
    if not url:
        raise InputError("empty URL: give s3://bucket/key or a local path")
    if url.startswith("s3://") and not Location(url).bucket:
        raise InputError(f"'{url}' names no bucket: expected s3://bucket/key")
    return Location(url)


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


# --- S3 plumbing -------------------------------------------------------------------------------

def _endpoint() -> str | None:
    return os.environ.get("S3_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    # botocore's own retries stay short: our backoff loop below owns the long outage budget.
    config = Config(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        signature_version="s3v4",
        s3={"addressing_style": "path"},  # MinIO and moto serve path-style URLs
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config,
                        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def s3_client():
    return _client(_endpoint())


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                     EndpointConnectionError, IncompleteReadError, ReadTimeoutError,
                                     ResponseStreamingError)
    from urllib3.exceptions import ProtocolError

    # ResponseStreamingError / IncompleteReadError: the connection dropped while a response body was read
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
                        ResponseStreamingError, IncompleteReadError, ProtocolError, ConnectionError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in {"SlowDown", "RequestTimeout"}
    return False


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def retry_seconds() -> float:
    return float(os.environ.get("S3_RETRY_SECONDS", "120"))


def with_retries(action: str, call: Callable[[], T]) -> T:
    """Run one S3 call, retrying transient failures with jittered backoff until the budget is spent."""
    deadline = time.monotonic() + retry_seconds()
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified right below
            if not _is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise UnavailableError(
                    f"S3 endpoint {_endpoint() or 'AWS'} unreachable for {retry_seconds():.0f}s while {action}: "
                    f"{type(exc).__name__}"
                ) from exc
            log.warning("S3 unreachable while %s (%s); retrying in %.1fs", action, type(exc).__name__, delay)
            time.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, 10.0)


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def is_precondition_failed(exc: BaseException) -> bool:
    """A conditional write (IfMatch / IfNoneMatch) refused: another writer came first."""
    return error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}


# --- fences: writes under a prefix only while this attempt holds its lease (fencing.py) -------------

_fences: dict[str, tuple[Callable[[], None], str]] = {}  # prefix URL -> (check, the lease's own URL)


def fence(prefix: Location, check: Callable[[], None], exempt: Location) -> None:
    """Call check() (which raises to stop) before every write or delete under `prefix` but `exempt`."""
    _fences[str(prefix).rstrip("/") + "/"] = (check, str(exempt))


def unfence(prefix: Location) -> None:
    _fences.pop(str(prefix).rstrip("/") + "/", None)


def check_fences(loc: Location) -> None:
    """Run the checks of every fence `loc` lies under (raises to stop the write)."""
    url = str(loc)
    for prefix, (check, exempt) in list(_fences.items()):
        if url.startswith(prefix) and url != exempt:
            check()


# --- the API the runner uses ----------------------------------------------------------------------

def stat(loc: Location) -> ObjectInfo:
    """Size and ETag of an existing object; InputError if it does not exist."""
    if loc.is_s3:
        try:
            head = with_retries(f"reading {loc}", lambda: s3_client().head_object(Bucket=loc.bucket, Key=loc.key))
        except Exception as exc:
            if is_not_found(exc):
                raise InputError(f"input {loc} does not exist") from exc
            raise
        return ObjectInfo(size=int(head["ContentLength"]), etag=head["ETag"].strip('"'))
    path = loc.path
    if not path.is_file():
        raise InputError(f"input {loc} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    st = path.stat()
    # Local files have no ETag: size and mtime identify the version that was read.
    return ObjectInfo(size=st.st_size, etag=f"local-{st.st_size}-{int(st.st_mtime)}")


def exists(loc: Location) -> bool:
    try:
        stat(loc)
        return True
    except InputError:
        return False


def download(loc: Location, dest: Path) -> Path:
    """Copy an object to a local file, streamed (never whole in memory). Local inputs are not copied."""
    if not loc.is_s3:
        stat(loc)
        return loc.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")

    def fetch() -> None:
        s3_client().download_file(loc.bucket, loc.key, str(partial))

    try:
        with_retries(f"downloading {loc}", fetch)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        if is_not_found(exc):
            raise InputError(f"input {loc} does not exist") from exc
        raise
    os.replace(partial, dest)
    return dest


def get_bytes(loc: Location) -> bytes:
    if not loc.is_s3:
        stat(loc)
        return loc.path.read_bytes()
    try:
        return with_retries(f"reading {loc}",
                            lambda: s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    except Exception as exc:
        if is_not_found(exc):
            raise InputError(f"input {loc} does not exist") from exc
        raise


def upload(src: Path, loc: Location) -> None:
    """Write a local file to the location. Local targets are written to a temp name and renamed."""
    check_fences(loc)
    if loc.is_s3:
        with_retries(f"writing {loc}", lambda: s3_client().upload_file(str(src), loc.bucket, loc.key))
        return
    _write_local(loc.path, lambda tmp: shutil.copyfile(src, tmp))


def put_bytes(loc: Location, data: bytes, content_type: str = "application/octet-stream") -> None:
    check_fences(loc)
    if loc.is_s3:
        with_retries(f"writing {loc}", lambda: s3_client().put_object(
            Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type))
        return
    _write_local(loc.path, lambda tmp: tmp.write_bytes(data))


def _write_local(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) to a temp name beside `path`, then rename: a reader never sees half a file, and a failed
    write (a full disk) leaves no .partial behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def list_names(prefix: Location) -> Iterator[str]:
    """Names (relative to the prefix) of the objects under a prefix or files under a folder."""
    if prefix.is_s3:
        key = prefix.key.rstrip("/") + "/" if prefix.key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        pages = with_retries(f"listing {prefix}",
                             lambda: list(paginator.paginate(Bucket=prefix.bucket, Prefix=key)))
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(key):]
        return
    root = prefix.path
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield str(path.relative_to(root))


def delete(loc: Location) -> None:
    check_fences(loc)
    if loc.is_s3:
        with_retries(f"deleting {loc}", lambda: s3_client().delete_object(Bucket=loc.bucket, Key=loc.key))
    else:
        loc.path.unlink(missing_ok=True)
