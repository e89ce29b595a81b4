"""Checkpoints: written whole or not at all, next to the run's outputs, and loadable without pickle.

A checkpoint is saved to a temporary file and `os.replace`d into place locally, then uploaded (an S3 PUT
is atomic), so a crash never leaves half a checkpoint. Everything in it is tensors or plain Python
values, so `torch.load(weights_only=True)` reads it: a file in an upload bucket can't run code.

A checkpoint is never replaced by an older one (issue 21): its position (optimisation step) travels with it
(S3 metadata `step`, a `.step` file beside a local one) and is compared before every write, and on S3 the
PUT is conditional on the ETag this attempt last read or wrote (`IfMatch`; `IfNoneMatch="*"` for the first),
so another attempt's checkpoint written in between stops this one (SupersededError) instead of being lost.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from helical_runner.data import storage
from helical_runner.errors import InputError, SupersededError
from helical_runner.data.storage import Location
from helical_runner.training.loop import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


def _pack_sequences(seqs: list[np.ndarray]) -> dict:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    flat = torch.from_numpy(np.concatenate(seqs).astype(np.int64)) if seqs else torch.zeros(0, dtype=torch.long)
    return {"flat": flat, "lengths": lengths}


def _unpack_sequences(packed: dict) -> list[np.ndarray]:
    flat = packed["flat"].numpy()
    ends = np.cumsum(packed["lengths"].numpy())
    return [flat[e - n:e] for e, n in zip(ends, packed["lengths"].numpy())]


def state_to_dict(state: TrainState) -> dict:
    plain = asdict(state)
    plain["val_ids"] = _pack_sequences(state.val_ids)
    return plain


def state_from_dict(plain: dict) -> TrainState:
    values = {f.name: plain[f.name] for f in fields(TrainState) if f.name in plain}
    values["val_ids"] = _unpack_sequences(plain["val_ids"])
    return TrainState(**values)


class CheckpointStore:
    """The run's checkpoint at <output>/checkpoint.pt, with a local copy in the scratch folder."""

    def __init__(self, output: Location, scratch: Path):
        self.location = output.join(CHECKPOINT_NAME)
        self.local = scratch / CHECKPOINT_NAME
        self.etag: str | None = None  # of the checkpoint this attempt last read or wrote (S3)
        self.write_id: str | None = None  # the write-id metadata of the checkpoint this attempt last wrote

    def save(self, payload: dict) -> None:
        """Write the checkpoint of `payload["state"]["step"]`; SupersededError if the one in place is newer
        or was written by another attempt since this one last read or wrote it."""
        step = int(payload["state"]["step"]) if "state" in payload else 0
        tmp = self.local.with_name(self.local.name + ".tmp")
        self.local.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, self.local)
        if self.location.is_s3:
            self._put_s3(step)
        else:
            self._replace_local(step)

    def _refuse_older(self, theirs: int | None, step: int) -> None:
        if theirs is not None and theirs > step:
            raise SupersededError(f"{self.location} holds step {theirs}, newer than this attempt's step {step}: "
                                  "another attempt is ahead; this one stops without replacing it")

    def _put_s3(self, step: int) -> None:
        loc, client = self.location, storage.s3_client()
        storage.check_fences(loc)
        try:
            self._refuse_older_than_in_place(step)
        except SupersededError:
            raise
        except Exception as exc:  # noqa: BLE001 - absent is fine: the first checkpoint
            if not storage.is_not_found(exc):
                raise
        condition = {"IfMatch": self.etag} if self.etag else {"IfNoneMatch": "*"}
        # Names this one write: a PUT the server applied but whose answer was lost (S3 restarting) is retried,
        # and the retry's 412 is then this attempt's own write, not another attempt's.
        metadata = {"step": str(step), "write-id": uuid.uuid4().hex}

        def put_on(condition: dict):
            def put():
                with open(self.local, "rb") as body:
                    return client.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, Metadata=metadata,
                                             **condition)
            return put

        try:
            storage.with_retries(f"writing {loc}", put_on(condition))
        except Exception as exc:  # noqa: BLE001
            if not storage.is_precondition_failed(exc):
                raise
            self._after_refused_put(metadata["write-id"], step, put_on)
        self.write_id = metadata["write-id"]
        # The ETag as the server keeps it, read back rather than taken from the PUT's answer (moto computes
        # an ETag lazily from a buffer a concurrent listing also reads, and once answered one it didn't keep)
        self.etag = self._refuse_older_than_in_place(step)

    def _after_refused_put(self, write_id: str, step: int, put_on) -> None:
        """A conditional PUT got 412. The checkpoint in place is told apart by its write-id: this very
        write (applied, its answer lost while S3 restarted: nothing to do); this attempt's previous
        checkpoint (the ETag held for it was not the one the server keeps, as moto can report when a
        listing computes it concurrently: retry once on the ETag read now); else another attempt's (stop)."""
        in_place = self._write_id_in_place()
        if in_place == write_id:
            log.info("%s: the write whose answer was lost had been applied; going on", self.location)
            return
        if in_place is not None and in_place == self.write_id:
            log.warning("%s: still this attempt's previous checkpoint, under another ETag than the one read "
                        "back; writing again on the ETag the server reports", self.location)
            self.etag = self._refuse_older_than_in_place(step)
            try:
                storage.with_retries(f"writing {self.location}", put_on({"IfMatch": self.etag}))
                return
            except Exception as exc:  # noqa: BLE001
                if not storage.is_precondition_failed(exc):
                    raise
        raise SupersededError(f"{self.location} was written by another attempt since this one last saw it; this "
                              f"attempt (step {step}) stops without replacing it") from None

    def _write_id_in_place(self) -> str | None:
        loc = self.location
        head = storage.with_retries(f"reading {loc}", lambda: storage.s3_client().head_object(
            Bucket=loc.bucket, Key=loc.key))
        return head.get("Metadata", {}).get("write-id")

    def _refuse_older_than_in_place(self, step: int) -> str:
        """HEAD the checkpoint in place: SupersededError if its step is newer than `step`; else its ETag."""
        loc = self.location
        head = storage.with_retries(f"reading {loc}", lambda: storage.s3_client().head_object(
            Bucket=loc.bucket, Key=loc.key))
        self._refuse_older(int(head.get("Metadata", {}).get("step", -1)), step)
        return head["ETag"].strip('"')

    def _replace_local(self, step: int) -> None:
        marker = self.location.path.with_name(CHECKPOINT_NAME + ".step")
        if marker.exists():
            self._refuse_older(int(marker.read_text() or -1), step)
        storage.upload(self.local, self.location)
        storage.put_bytes(storage.parse(str(marker)), str(step).encode())

    def load(self) -> dict | None:
        if not storage.exists(self.location):
            return None
        if self.location.is_s3:
            loc = self.location
            self.etag = storage.with_retries(f"reading {loc}", lambda: storage.s3_client().head_object(
                Bucket=loc.bucket, Key=loc.key))["ETag"].strip('"')
        path = storage.download(self.location, self.local)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same problem
            raise InputError(f"checkpoint {self.location} is unreadable ({type(exc).__name__}); "
                             "delete it to start over") from None

    def delete(self) -> None:
        storage.delete(self.location)
