"""The step's lease: one attempt at a time writes a run's outputs (issue 21).

A Celery worker lost mid fine-tune leaves its runner container training while Airflow's retry starts a
second one on the same output prefix. The DAG stops the earlier container first (dags/helical_lib/runner.py),
but where it can't (another host's engine, a proxy that was down), the outputs are fenced:

- Each attempt takes `<output>/lease.<command>.json` (finetune: runs/<run_id>/, predict: its predict/
  folder) before writing anything, naming itself: the Airflow try number
  ($HELICAL_TRY_NUMBER) and its container ($HELICAL_ATTEMPT). Taking it is a conditional write (S3
  `IfNoneMatch="*"` when there is none, `IfMatch=<the ETag read>` to replace an older attempt's), so two
  attempts can't both believe they hold it. An attempt that finds a newer one holding it stops at once,
  writing nothing (SupersededError).
- Every later write under the prefix first checks that the lease is still this attempt's (storage.fence):
  a newer attempt that took it in between fences this one out before its next write.
- The checkpoint is written with `IfMatch` on the ETag this attempt last read or wrote (checkpoint.py), so an
  older attempt can never replace a newer checkpoint, even between a lease check and its write.

S3 conditional writes behave the same on AWS, MinIO and moto (ENVIRONMENT.md). Local outputs take the lease
under an flock. `chunk` takes none: its prefix belongs to the dataset, not to a run (two runs of one upload
write the same bytes), and its manifest, written last, is what makes chunks count.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass

from helical_runner.data import storage
from helical_runner.errors import SupersededError
from helical_runner.data.storage import Location

LEASE_NAME = "lease.{command}.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """Who is writing: Airflow's try number (higher = newer) and the container (or host:pid) running it."""

    try_number: int
    name: str

    @classmethod
    def from_env(cls) -> "Attempt":
        try_number = int(os.environ.get("HELICAL_TRY_NUMBER") or 0)
        return cls(try_number, os.environ.get("HELICAL_ATTEMPT") or f"{socket.gethostname()}:{os.getpid()}")

    def newer_than(self, other: "Attempt") -> bool:
        return self.try_number > other.try_number

    def describe(self) -> str:
        return f"try {self.try_number} ({self.name})"


class Lease:
    """The lease on one output prefix. acquire() once, then check() before each write (storage.fence
    does it for every write under the prefix)."""

    def __init__(self, output: Location, attempt: Attempt, command: str):
        self.output = output
        self.location = output.join(LEASE_NAME.format(command=command))
        self.attempt = attempt
        self.etag: str | None = None

    # --- taking it ------------------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        """Take the lease unless a newer attempt holds it. SupersededError (nothing written) if one does."""
        if self.location.is_s3:
            self._acquire_s3()
        else:
            self._acquire_local()
        storage.fence(self.output, self.check, exempt=self.location)
        return self

    def _body(self) -> bytes:
        return json.dumps({**asdict(self.attempt), "taken_at": time.time()}).encode()

    def _refuse_if_newer(self, holder: Attempt) -> None:
        # Airflow's try numbers start at 1; 0 is a run by hand (no HELICAL_TRY_NUMBER), which takes over
        # from an earlier run by hand: rerunning a command to resume it is how people use the CLI
        same_try = holder.try_number == self.attempt.try_number > 0 and holder.name != self.attempt.name
        if holder.newer_than(self.attempt) or same_try:
            raise SupersededError(
                f"{self.output}: a newer attempt, {holder.describe()}, holds this step's lease "
                f"({self.location}); this attempt, {self.attempt.describe()}, stops without writing")

    def _acquire_s3(self) -> None:
        client, loc = storage.s3_client(), self.location
        for _ in range(20):  # each pass loses only to another attempt's conditional write
            holder, etag = self._read_s3()
            if holder is not None:
                self._refuse_if_newer(holder)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                storage.with_retries(f"taking the lease {loc}", lambda: client.put_object(
                    Bucket=loc.bucket, Key=loc.key, Body=self._body(), ContentType="application/json",
                    **condition))
            except Exception as exc:  # noqa: BLE001 - only a lost race is retried here
                if storage.is_precondition_failed(exc):
                    continue
                raise
            # read back: the ETag as the server keeps it, and proof that this attempt is the one named
            holder, self.etag = self._read_s3()
            if holder != self.attempt:
                continue
            return
        raise SupersededError(f"{self.output}: the lease {loc} kept changing under this attempt; stopping")

    def _read_s3(self) -> tuple[Attempt | None, str | None]:
        client, loc = storage.s3_client(), self.location
        try:
            got = storage.with_retries(f"reading the lease {loc}",
                                       lambda: client.get_object(Bucket=loc.bucket, Key=loc.key))
        except Exception as exc:  # noqa: BLE001
            if storage.is_not_found(exc):
                return None, None
            raise
        return _attempt(got["Body"].read()), got["ETag"].strip('"')

    def _acquire_local(self) -> None:
        path = self.location.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                self._refuse_if_newer(_attempt(path.read_bytes()))
            body = self._body()
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(body)
            os.replace(tmp, path)
            self.etag = body.decode()

    # --- holding it -----------------------------------------------------------------------------------
    def check(self) -> None:
        """SupersededError if the lease is no longer this attempt's (a newer attempt took it)."""
        if self.location.is_s3:
            holder, etag = self._read_s3()
            if etag == self.etag:
                return
            if holder is None:  # gone (an S3 that lost objects): nobody newer holds it, so take it again
                log.warning("%s: the lease %s is gone; taking it again", self.output, self.location)
                self._acquire_s3()
                return
        else:
            body = self.location.path.read_bytes() if self.location.path.exists() else b""
            if body.decode(errors="replace") == self.etag:
                return
            holder = _attempt(body) if body else None
        who = holder.describe() if holder else "nobody (the lease was removed)"
        raise SupersededError(f"{self.output}: this step's lease is now held by {who}; this attempt, "
                              f"{self.attempt.describe()}, stops before writing more")

    def release(self) -> None:
        storage.unfence(self.output)


def _attempt(body: bytes) -> Attempt:
    try:
        raw = json.loads(body)
        return Attempt(int(raw["try_number"]), str(raw["name"]))
    except (ValueError, KeyError, TypeError):
        return Attempt(0, "an unreadable lease")


def hold(output: Location, command: str) -> Lease:
    """Take `command`'s lease on `output` for this process's attempt ($HELICAL_TRY_NUMBER, $HELICAL_ATTEMPT)."""
    return Lease(output, Attempt.from_env(), command).acquire()
