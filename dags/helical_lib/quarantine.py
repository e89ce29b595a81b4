"""Move a bad upload out of incoming/ into quarantine/, with the reason beside it; run on workers.

    incoming/<name>  ->  quarantine/<name>              the upload, byte for byte (never changed)
                         quarantine/<name>.error.json   one-line reason, step, run, where the runner said it

Nothing is ever lost: the copy is made only of the version that was judged (CopySourceIfMatch on the
ETag the run was started for), checked, and the reason written, before the upload is deleted (again only
if its ETag is still that one). A name already taken by a different bad upload gets the ETag appended.
Every step is idempotent, so a retried task finishes a half-done move. A newer upload under the same key
is left alone: it has its own run.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from functools import partial
from pathlib import PurePosixPath

from helical_lib import s3

log = logging.getLogger(__name__)

SOURCE_ETAG = "helical-source-etag"  # object metadata on the quarantined copy: which upload it was


def target_key(key: str, etag: str, taken_by) -> str:
    """quarantine/<name> for incoming/<name>, or quarantine/<stem>.<etag>.h5ad if another upload has it.

    taken_by(key) -> the source ETag of what is already at key, or None if nothing is."""
    name = key.removeprefix(s3.INCOMING) if key.startswith(s3.INCOMING) else PurePosixPath(key).name
    plain = f"{s3.QUARANTINE}{name}"
    if taken_by(plain) in (None, etag):
        return plain
    path = PurePosixPath(name)
    return f"{s3.QUARANTINE}{path.with_name(f'{path.stem}.{etag[:12]}{path.suffix}')}"


def move_to_quarantine(client, bucket: str, data: str, etag: str, reason: dict) -> dict:
    """Quarantine the upload `data` (s3:// URL, or a /data path that is only reported) judged bad at ETag
    `etag`; returns the note written to quarantine/<name>.error.json."""
    etag = s3.clean_etag(etag)
    note = {"source": data, "etag": etag, "quarantined_at": datetime.now(timezone.utc).isoformat(), **reason}
    quarantined = partial(_source_etag, client, bucket)  # what already sits at a quarantine key
    if not data.startswith("s3://"):
        note.update(object=None, moved=False, note="a file in the data folder is left where it is")
        return _write_note(client, bucket, target_key(data, etag, quarantined), note)

    src_bucket, src_key = s3.parse_url(data)
    if src_bucket != bucket or not src_key.startswith(s3.INCOMING):
        # A run triggered from the form on the user's own object (a dataset folder, another bucket): that
        # object is theirs to keep where it is; only uploads to incoming/ are moved.
        note.update(object=None, moved=False, note="not an upload to incoming/: the object is left where it is")
        return _write_note(client, bucket, target_key(src_key, etag, quarantined), note)
    target = target_key(src_key, etag, quarantined)
    copied = quarantined(target) == etag
    if not copied:
        copied = _copy(client, src_bucket, src_key, etag, bucket, target)
    note.update(object=f"s3://{bucket}/{target}" if copied else None, moved=copied)
    if not copied:
        note["note"] = "the upload was deleted or replaced before it could be moved: nothing to keep"
    _write_note(client, bucket, target, note)
    if copied:
        _delete_if_unchanged(client, src_bucket, src_key, etag)
    return note


def _source_etag(client, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey"):
            return None
        raise
    return head.get("Metadata", {}).get(SOURCE_ETAG, s3.clean_etag(head.get("ETag")))


def _copy(client, src_bucket: str, src_key: str, etag: str, bucket: str, target: str) -> bool:
    """Copy the judged version (any size: managed multipart copy); False if it is gone or was replaced."""
    from botocore.exceptions import ClientError

    try:
        client.copy({"Bucket": src_bucket, "Key": src_key}, bucket, target, ExtraArgs={
            "CopySourceIfMatch": f'"{etag}"', "Metadata": {SOURCE_ETAG: etag}, "MetadataDirective": "REPLACE"})
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey", "412", "PreconditionFailed"):
            return False
        raise
    if _source_etag(client, bucket, target) != etag:
        raise RuntimeError(f"quarantine copy s3://{bucket}/{target} does not carry ETag {etag}; upload kept")
    return True


def _delete_if_unchanged(client, bucket: str, key: str, etag: str) -> None:
    from botocore.exceptions import ClientError

    if _source_etag(client, bucket, key) != etag:
        return  # already moved, or a newer upload took the key: that one stays
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchKey", "412", "PreconditionFailed"):
            raise


def _write_note(client, bucket: str, target: str, note: dict) -> dict:
    client.put_object(Bucket=bucket, Key=f"{target}.error.json", ContentType="application/json",
                      Body=json.dumps(note, indent=1).encode())
    log.info("quarantined %s -> s3://%s/%s: %s", note["source"], bucket, target, note.get("error"))
    return note


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
