"""One writer per step (issue 21): an attempt takes its step's lease before writing, stops at once when a
newer attempt holds it, and a checkpoint is never replaced by an older one. Against moto's S3 server (real
conditional writes: IfNoneMatch / IfMatch) and local folders."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest
import torch

from conftest import BUCKET, run_cli
from helical_runner.training import checkpoint
from helical_runner.outputs import fencing
from helical_runner.data import storage
from helical_runner.errors import SupersededError


def lease(output: str, try_number: int, name: str, command: str = "finetune") -> fencing.Lease:
    return fencing.Lease(storage.parse(output), fencing.Attempt(try_number, name), command)


def in_its_process(held: fencing.Lease) -> fencing.Lease:
    """The fences of `held`'s own process (one process plays several attempts here)."""
    storage._fences.clear()
    storage.fence(held.output, held.check, exempt=held.location)
    return held


@pytest.fixture(autouse=True)
def no_fences_left():
    yield
    storage._fences.clear()  # each Lease registers a process-wide fence; tests play several attempts


@pytest.fixture(params=["s3", "local"])
def output(request, s3, tmp_path):
    return f"s3://{BUCKET}/runs/fenced" if request.param == "s3" else str(tmp_path / "runs" / "fenced")


def test_a_newer_attempt_fences_the_older_one_out(output):
    old = lease(output, 1, "helical-finetune-r-t1-aaaaaa").acquire()
    storage.put_bytes(storage.parse(f"{output}/report.json"), b'{"by": "try 1"}')
    new = lease(output, 2, "helical-finetune-r-t2-bbbbbb").acquire()  # the retry takes it over
    in_its_process(old)
    with pytest.raises(SupersededError, match=r"now held by try 2 \(helical-finetune-r-t2-bbbbbb\)"):
        storage.put_bytes(storage.parse(f"{output}/report.json"), b'{"by": "try 1, late"}')
    with pytest.raises(SupersededError):
        storage.delete(storage.parse(f"{output}/report.json"))
    assert json.loads(storage.get_bytes(storage.parse(f"{output}/report.json"))) == {"by": "try 1"}
    in_its_process(new).check()  # still the newer one's
    # the old attempt, restarted, does not take it back
    with pytest.raises(SupersededError, match="a newer attempt, try 2"):
        lease(output, 1, "helical-finetune-r-t1-aaaaaa").acquire()


def test_the_same_try_from_another_container_is_refused_but_a_run_by_hand_takes_over(output):
    lease(output, 3, "container-a").acquire()
    with pytest.raises(SupersededError):
        lease(output, 3, "container-b").acquire()
    lease(output, 3, "container-a").acquire()  # the holder itself may take it again
    # runs by hand (no HELICAL_TRY_NUMBER: try 0) rerun a command to resume it: the later one takes over
    other = output + "-by-hand"
    first = lease(other, 0, "laptop:100").acquire()
    lease(other, 0, "laptop:200").acquire()
    with pytest.raises(SupersededError):
        first.check()


def test_steps_have_leases_of_their_own(output):
    """finetune's and predict's attempts (each its own try numbers) don't fence each other out."""
    lease(output, 2, "finetune-t2", "finetune").acquire()
    lease(output, 1, "predict-t1", "predict").acquire()


def test_two_attempts_racing_for_a_fresh_lease_get_one_holder(s3):
    """Conditional create: of two attempts that both saw no lease, one wins; the loser reads the winner's."""
    output = f"s3://{BUCKET}/runs/race"
    a, b = lease(output, 1, "a"), lease(output, 2, "b")
    a.acquire()
    b.acquire()
    holder = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/race/lease.finetune.json")["Body"].read())
    assert holder["name"] == "b"
    with pytest.raises(SupersededError):
        a.check()


def _payload(step: int, by: float = 0.0) -> dict:
    return {"state": {"step": step}, "weights": torch.zeros(4) + step + by}


def test_a_checkpoint_is_never_replaced_by_an_older_one(output, tmp_path):
    first = checkpoint.CheckpointStore(storage.parse(output), tmp_path / "a")
    first.save(_payload(5))
    second = checkpoint.CheckpointStore(storage.parse(output), tmp_path / "b")
    assert second.load()["state"]["step"] == 5
    second.save(_payload(8))
    with pytest.raises(SupersededError, match="holds step 8, newer than this attempt's step 6"):
        first.save(_payload(6))  # the orphan's next chunk: must not undo the retry's progress
    assert checkpoint.CheckpointStore(storage.parse(output), tmp_path / "c").load()["state"]["step"] == 8


def test_a_checkpoint_written_by_another_attempt_in_between_stops_this_one(s3, tmp_path):
    """Even at an equal or later step, a checkpoint this attempt hasn't seen is another writer's: IfMatch."""
    output = storage.parse(f"s3://{BUCKET}/runs/ckpt-race")
    mine = checkpoint.CheckpointStore(output, tmp_path / "a")
    mine.save(_payload(3))
    theirs = checkpoint.CheckpointStore(output, tmp_path / "b")
    theirs.load()
    theirs.save(_payload(3, by=0.5))  # another attempt's own step 3 (other bytes, another ETag)
    with pytest.raises(SupersededError, match="written by another attempt"):
        mine.save(_payload(4))
    assert checkpoint.CheckpointStore(output, tmp_path / "c").load()["state"]["step"] == 3


def test_an_attempt_that_finds_a_newer_one_exits_75_with_one_line_writing_nothing(s3, tiny_model, cells_h5ad):
    """The CLI, as a superseded container runs it: exit 75, one line naming both attempts, no output."""
    s3.put_object(Bucket=BUCKET, Key="runs/late/lease.finetune.json",
                  Body=json.dumps({"try_number": 2, "name": "helical-finetune-late-t2-cccccc"}).encode())
    result = run_cli("finetune", f"--data={cells_h5ad}", "--label-column=cell_type", f"--output=s3://{BUCKET}/runs/late",
                     "--epochs=1", env={"HELICAL_TRY_NUMBER": "1", "HELICAL_ATTEMPT": "helical-finetune-late-t1-dddddd"})
    assert result.returncode == 75, result.stderr[-2000:]
    [line] = [l for l in result.stderr.splitlines() if l.startswith("helical-runner: error:")]
    assert "try 2 (helical-finetune-late-t2-cccccc)" in line and "try 1 (helical-finetune-late-t1-dddddd)" in line
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/late/").get("Contents", [])]
    assert keys == ["runs/late/lease.finetune.json"]  # no report, checkpoint, model or error.json


def test_one_attempt_saves_checkpoint_after_checkpoint_while_others_list_the_prefix(s3, tmp_path):
    """The common case: one attempt, a checkpoint after every chunk, while Airflow's sensors and people
    list the bucket (moto answered a PUT with an ETag it did not keep when a listing ran at the same time:
    the ETag is read back from the server)."""
    stop = threading.Event()

    def list_all():
        while not stop.is_set():
            s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/steady/")

    lister = threading.Thread(target=list_all, daemon=True)
    lister.start()
    try:
        store = checkpoint.CheckpointStore(storage.parse(f"s3://{BUCKET}/runs/steady"), tmp_path)
        for step in range(1, 7):
            store.save({"state": {"step": step}, "weights": torch.rand(200_000)})
    finally:
        stop.set()
        lister.join()
    head = s3.head_object(Bucket=BUCKET, Key="runs/steady/checkpoint.pt")
    assert head["Metadata"]["step"] == "6"


def test_a_lease_that_vanished_is_taken_again(s3):
    """An S3 that lost the lease object (nobody newer holds it): the attempt takes it again and goes on."""
    held = in_its_process(lease(f"s3://{BUCKET}/runs/vanished", 1, "t1").acquire())
    s3.delete_object(Bucket=BUCKET, Key="runs/vanished/lease.finetune.json")
    storage.put_bytes(storage.parse(f"s3://{BUCKET}/runs/vanished/report.json"), b"{}")
    holder = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/vanished/lease.finetune.json")["Body"].read())
    assert holder["name"] == "t1" and held.etag


class AnswerLosingProxy:
    """A TCP proxy in front of the S3 server that, once armed, lets one PUT of `key` through and then drops
    the connection instead of passing the server's answer on: the write is applied, the writer never hears
    so (what an S3 restarting at the wrong moment does), and its client sends the PUT again."""

    def __init__(self, upstream_port: int, key: str):
        self.upstream_port, self.target = upstream_port, f"PUT /{BUCKET}/{key}".encode()
        self.armed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            current = {"request": b""}
            threading.Thread(target=self._requests, args=(client, upstream, current), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, current), daemon=True).start()

    def _requests(self, client, upstream, current) -> None:
        while data := _recv(client):
            if data[:8].split(b" ")[0] in {b"GET", b"PUT", b"HEAD", b"POST", b"DELETE"}:
                current["request"] = data.split(b"\r\n", 1)[0]
            with contextlib.suppress(OSError):
                upstream.sendall(data)
        upstream.close()

    def _answers(self, upstream, client, current) -> None:
        while data := _recv(upstream):
            if (self.armed.is_set() and current["request"].startswith(self.target)
                    and not data.startswith(b"HTTP/1.1 100")):
                self.armed.clear()
                for sock in (client, upstream):  # the answer is lost; the write stays applied
                    with contextlib.suppress(OSError):  # (close alone sends no FIN while a recv blocks on it)
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                return
            with contextlib.suppress(OSError):
                client.sendall(data)
        client.close()


def _recv(sock) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def test_a_checkpoint_put_whose_answer_was_lost_is_not_taken_for_another_attempts(s3, s3_server_control, tmp_path,
                                                                                   monkeypatch):
    """S3 applied the PUT, the answer never came, the client sent it again and got 412 (its own write had
    changed the ETag): the attempt recognises its own write and goes on (CI saw this stop a fine-tune with
    exit 75 when S3 restarted mid-write)."""
    proxy = AnswerLosingProxy(s3_server_control.port, "runs/lost-answer/checkpoint.pt")
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    store = checkpoint.CheckpointStore(storage.parse(f"s3://{BUCKET}/runs/lost-answer"), tmp_path)
    store.save(_payload(1))
    proxy.armed.set()
    store.save(_payload(2))
    assert not proxy.armed.is_set()  # the answer to the first PUT of step 2 was dropped
    store.save(_payload(3))
    head = s3.head_object(Bucket=BUCKET, Key="runs/lost-answer/checkpoint.pt")
    assert head["Metadata"]["step"] == "3" and head["ETag"].strip('"') == store.etag


def test_a_stale_etag_for_this_attempts_own_checkpoint_is_not_taken_for_another_attempt(s3, tmp_path):
    """moto can answer a HEAD with an ETag it then doesn't keep (a listing computing it at the same time:
    CI saw a 20-second-outage fine-tune stop with exit 75 this way). The checkpoint in place is still this
    attempt's own (its write-id), so the attempt writes again on the ETag the server reports; a checkpoint
    another attempt wrote still stops it."""
    output = storage.parse(f"s3://{BUCKET}/runs/stale-etag")
    mine = checkpoint.CheckpointStore(output, tmp_path / "a")
    mine.save(_payload(3))
    mine.etag = "0" * 32  # what a racing ETag computation handed back
    mine.save(_payload(4))
    head = s3.head_object(Bucket=BUCKET, Key="runs/stale-etag/checkpoint.pt")
    assert head["Metadata"]["step"] == "4" and head["ETag"].strip('"') == mine.etag
    theirs = checkpoint.CheckpointStore(output, tmp_path / "b")
    theirs.load()
    theirs.save(_payload(5))
    mine.etag = "0" * 32
    with pytest.raises(SupersededError, match="written by another attempt"):
        mine.save(_payload(6))
    assert checkpoint.CheckpointStore(output, tmp_path / "c").load()["state"]["step"] == 5
