"""Find uploads in incoming/ that no run has been started for: a trigger (polls in the triggerer, costs no
worker slot) and the deferrable sensor that waits on it; and which DAG each upload goes to (route).

"New" means a (key, ETag) pair with no marker under ledger/. Markers are written only after the
run exists, and that run's id is derived from key + ETag, so a crash between the two makes the next pass
trigger again, which Airflow turns into a no-op: every upload gets exactly one run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from helical_lib import s3
from helical_lib.plan import ANNOTATE_DAG

log = logging.getLogger(__name__)

FINETUNE_DAG = "helical_finetune"
TRAIN = f"{s3.INCOMING}train/"  # incoming/train/<label column>/<name>.h5ad: fine-tune on that column
ANNOTATE = f"{s3.INCOMING}annotate/"  # incoming/annotate/<name>.h5ad: annotate
DEFAULT_LABEL_COLUMN = "cell_type"  # a plain upload fine-tunes on it, or is annotated when it lacks it
MAX_LABEL_COLUMN = 200  # helical_finetune's form takes label columns of 1 to 200 characters


def route(key: str) -> tuple[str, dict] | None:
    """(DAG id, conf beside data and etag) for an upload, by where it was put (README, "Uploads and annotation"):

        incoming/train/<label column>/<name>.h5ad  -> helical_finetune on that column (<name> may hold folders)
        incoming/annotate/<name>.h5ad              -> helical_annotate (<name> may hold folders)
        any other incoming/<name>.h5ad             -> helical_finetune on cell_type, or_annotate: handed to
                                                      helical_annotate when it has no such column

    A train/ folder name that can't be a label column (empty, as in incoming/train//x.h5ad, or over 200
    characters) and a file directly in train/ make a plain upload: every upload gets a run. None for a key
    that is no .h5ad under incoming/."""
    if not key.startswith(s3.INCOMING) or not key.endswith(".h5ad"):
        return None
    if key.startswith(ANNOTATE):
        return ANNOTATE_DAG, {}
    label, sep, _ = key.removeprefix(TRAIN).partition("/")
    if key.startswith(TRAIN) and sep and 0 < len(label) <= MAX_LABEL_COLUMN:
        return FINETUNE_DAG, {"label_column": label}
    return FINETUNE_DAG, {"label_column": DEFAULT_LABEL_COLUMN, "or_annotate": True}


def runs_to_start(objects: list[dict], bucket: str, dag_id: str) -> list[dict]:
    """One trigger request per upload that route() sends to `dag_id`: a run id derived from key + ETag, the
    object (and the route's settings) in the conf."""
    requests = []
    for obj in objects:
        found = route(obj["key"])
        if found and found[0] == dag_id:
            requests.append({"trigger_run_id": s3.ingest_run_id(obj["key"], obj["etag"]),
                             "conf": {"data": f"s3://{bucket}/{obj['key']}", "etag": obj["etag"], **found[1]}})
    return requests


def find_new(client, bucket: str, prefix: str = s3.INCOMING, suffix: str = ".h5ad") -> list[dict]:
    """Objects under prefix (ending in suffix) whose (key, ETag) has no ledger marker yet, oldest first."""
    paginator = client.get_paginator("list_objects_v2")
    marked = {obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=f"{s3.LEDGER}{prefix}")
              for obj in page.get("Contents", [])}
    found = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key, etag = obj["Key"], s3.clean_etag(obj.get("ETag"))
            if key.endswith(suffix) and s3.ledger_key(key, etag) not in marked:
                found.append({"key": key, "etag": etag, "size": obj.get("Size", 0),
                              "modified": obj["LastModified"].isoformat()})
    return sorted(found, key=lambda o: (o["modified"], o["key"]))


def mark_seen(client, bucket: str, objects: list[dict]) -> int:
    """Write one ledger marker per object (conditional create: an existing marker is left alone)."""
    from botocore.exceptions import ClientError

    written = 0
    for obj in objects:
        try:
            client.put_object(Bucket=bucket, Key=s3.ledger_key(obj["key"], obj["etag"]), Body=b"",
                              IfNoneMatch="*")
            written += 1
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
    return written


class NewObjectsTrigger(BaseTrigger):
    """Fires once there is at least one new object; polls S3 every poll_interval seconds."""

    def __init__(self, conn_id: str, bucket: str, prefix: str = s3.INCOMING, poll_interval: float = 5.0):
        super().__init__()
        self.conn_id, self.bucket, self.prefix, self.poll_interval = conn_id, bucket, prefix, poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.NewObjectsTrigger", {"conn_id": self.conn_id, "bucket": self.bucket,
                                                  "prefix": self.prefix, "poll_interval": self.poll_interval})

    def _poll(self) -> list[dict]:
        return find_new(s3.client(self.conn_id), self.bucket, self.prefix)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                # boto3 is blocking: poll in a thread so the triggerer's loop keeps serving other triggers
                found = await asyncio.to_thread(self._poll)
            except Exception as exc:  # noqa: BLE001 - an unreachable S3 is waited out, not fatal
                self.log.warning("polling s3://%s/%s failed, retrying: %s", self.bucket, self.prefix, exc)
                found = []
            if found:
                yield TriggerEvent({"status": "found", "objects": found})
                return
            await asyncio.sleep(self.poll_interval)


class NewObjectsSensor(BaseSensorOperator):
    """Waits for uploads with no run yet and returns them ([{key, etag, size, modified}]).

    Deferrable by default: the wait happens in the triggerer, polling every poke_interval seconds."""

    def __init__(self, *, prefix: str = s3.INCOMING, deferrable: bool = True, **kwargs):
        kwargs.setdefault("poke_interval", 5)
        super().__init__(**kwargs)
        self.prefix, self.deferrable = prefix, deferrable

    def execute(self, context):
        from helical_lib.settings import Settings

        settings = Settings.from_env()
        if not self.deferrable:
            super().execute(context)
            return find_new(s3.client(settings.s3_conn_id), settings.bucket, self.prefix)
        self.defer(trigger=NewObjectsTrigger(settings.s3_conn_id, settings.bucket, self.prefix,
                                             float(self.poke_interval)),
                   method_name="execute_complete", timeout=self.timeout_delta())

    def timeout_delta(self):
        from datetime import timedelta

        return timedelta(seconds=self.timeout) if self.timeout else None

    def poke(self, context) -> bool:
        from helical_lib.settings import Settings

        settings = Settings.from_env()
        return bool(find_new(s3.client(settings.s3_conn_id), settings.bucket, self.prefix))

    def execute_complete(self, context, event: dict) -> list[dict]:
        objects = event["objects"]
        self.log.info("new uploads: %s", ", ".join(f"{o['key']} ({o['etag']})" for o in objects))
        return objects
