"""Checkpoints: written whole or not at all, next to the run's outputs, and loadable without pickle.

A checkpoint is saved to a temporary file and `os.replace`d into place locally, then uploaded (an S3 PUT
is atomic), so a crash never leaves half a checkpoint. Everything in it is tensors or plain Python
values, so `torch.load(weights_only=True)` reads it: a file in an upload bucket can't run code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from helical_runner import storage
from helical_runner.errors import InputError
from helical_runner.storage import Location
from helical_runner.training import TrainState

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

    def save(self, payload: dict) -> None:
        tmp = self.local.with_name(self.local.name + ".tmp")
        self.local.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, self.local)
        storage.upload(self.local, self.location)

    def load(self) -> dict | None:
        if not storage.exists(self.location):
            return None
        path = storage.download(self.location, self.local)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same problem
            raise InputError(f"checkpoint {self.location} is unreadable ({type(exc).__name__}); "
                             "delete it to start over") from None

    def delete(self) -> None:
        storage.delete(self.location)
