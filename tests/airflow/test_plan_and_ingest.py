"""Input checks, summaries and the upload ledger against an in-process S3 (moto)."""

from __future__ import annotations

import json
import re

import pytest
from airflow.sdk.exceptions import AirflowFailException

from helical_lib import s3
from helical_lib.ingest import NewObjectsTrigger, find_new, mark_seen
from helical_lib.plan import make_plan, quarantine, summarise, summarise_embedding
from helical_lib.settings import Settings

SETTINGS = Settings.from_env({"HELICAL_DATA_DIR": "/nonexistent"})
PARAMS = {"data": "s3://helical/incoming/atlas.h5ad", "label_column": "cell_type", "model": "gf-12L-38M-i4096",
          "profile": "cpu-small", "epochs": 2, "precision": None, "batch_size": None, "tokens_per_batch": None,
          "lr": None, "cells_per_chunk": None, "etag": None}
# Airflow's default [scheduler] allowed_run_id_pattern
RUN_ID_PATTERN = r"^[A-Za-z0-9_.~:+-]+$"


def test_plan_for_an_uploaded_object(moto_s3):
    etag = moto_s3.put_object(Bucket="helical", Key="incoming/atlas.h5ad", Body=b"x" * 100)["ETag"].strip('"')
    plan = make_plan(PARAMS, "manual__2026-11-23T10:00:00+00:00", SETTINGS)
    assert plan["etag"] == etag and plan["size"] == 100
    # ':' and '+' are cleaned away, so a hash of the exact run id keeps the run prefix its own
    assert re.fullmatch(r"manual__2026-11-23T10-00-00-00-00-[0-9a-f]{10}", plan["run_id"])
    assert plan["run"] == f"s3://helical/runs/{plan['run_id']}"
    assert plan["chunks"] == f"s3://helical/chunks/atlas-{etag[:12]}"
    assert plan["queue"] == "cpu" and plan["profile"] == "cpu-small" and plan["epochs"] == 2


def test_plan_fails_fast_on_missing_or_changed_input(moto_s3):
    with pytest.raises(AirflowFailException, match="not found"):
        make_plan(PARAMS, "r1", SETTINGS)
    moto_s3.put_object(Bucket="helical", Key="incoming/atlas.h5ad", Body=b"new content")
    with pytest.raises(AirflowFailException, match="changed since it was uploaded"):
        make_plan({**PARAMS, "etag": '"0123"'}, "r1", SETTINGS)


def test_plan_refuses_inputs_over_the_profile_cap(moto_s3, tmp_path, monkeypatch):
    from conftest import REPO

    text = (REPO / "config" / "profiles.yaml").read_text().replace("max_input_bytes: 4g", "max_input_bytes: 10")
    (tmp_path / "profiles.yaml").write_text(text)
    monkeypatch.setenv("HELICAL_PROFILES", str(tmp_path / "profiles.yaml"))
    moto_s3.put_object(Bucket="helical", Key="incoming/atlas.h5ad", Body=b"x" * 11)
    with pytest.raises(AirflowFailException, match="over profile cpu-small's cap"):
        make_plan(PARAMS, "r1", SETTINGS)
    with pytest.raises(AirflowFailException, match="unknown profile"):
        make_plan({**PARAMS, "profile": "tpu"}, "r1", SETTINGS)


def test_plan_for_a_local_file(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "local.h5ad").write_bytes(b"y" * 5)
    settings = Settings.from_env({"HELICAL_DATA_DIR": str(tmp_path)})
    plan = make_plan({**PARAMS, "data": "/data/datasets/local.h5ad"}, "r1", settings)
    assert plan["size"] == 5 and plan["chunks"].startswith("s3://helical/chunks/local-")
    for bad in ("/data/missing.h5ad", "/data/../etc/x.h5ad", "/etc/x.h5ad"):
        with pytest.raises(AirflowFailException):
            make_plan({**PARAMS, "data": bad}, "r1", settings)


def test_summary_collects_the_reports(moto_s3):
    plan = {"run_id": "r1", "data": "s3://helical/incoming/a.h5ad", "etag": "e", "profile": "cpu-small",
            "run": "s3://helical/runs/r1"}
    moto_s3.put_object(Bucket="helical", Key="runs/r1/report.json", Body=json.dumps(
        {"status": "succeeded", "accuracy": 0.9, "throughput": {"cells_per_second": 123.4}, "steps": 7}))
    summary = summarise(plan, SETTINGS)
    assert summary["accuracy"] == 0.9 and summary["cells_per_second"] == 123.4 and summary["steps"] == 7
    assert summary["report_url"] == "s3://helical/runs/r1/report.json"
    assert summary["report_html_url"] == "s3://helical/runs/r1/report.html"
    assert summary["prediction_report_html_url"] == "s3://helical/runs/r1/predict/report.html"
    stored = json.loads(moto_s3.get_object(Bucket="helical", Key="runs/r1/summary.json")["Body"].read())
    assert stored == summary


def test_embedding_summary_collects_the_embed_report(moto_s3):
    plan = {"run_id": "r2", "data": "s3://helical/incoming/a.h5ad", "etag": "e", "profile": "cpu-small",
            "run": "s3://helical/runs/r2", "model": "scGPT_CP"}
    moto_s3.put_object(Bucket="helical", Key="runs/r2/embed/report.json", Body=json.dumps(
        {"status": "succeeded", "model": {"name": "scGPT_CP"}, "cells": {"embedded": 500},
         "clusters": {"clusters": 7}, "cells_per_second": 80.5}))
    summary = summarise_embedding(plan, SETTINGS)
    assert summary["cells"] == 500 and summary["clusters"] == 7 and summary["model"] == "scGPT_CP"
    assert summary["embeddings_url"] == "s3://helical/runs/r2/embed/embeddings.h5ad"
    assert summary["report_html_url"] == "s3://helical/runs/r2/embed/report.html"
    stored = json.loads(moto_s3.get_object(Bucket="helical", Key="runs/r2/summary.json")["Body"].read())
    assert stored == summary


def test_ledger_reports_each_upload_once(moto_s3):
    moto_s3.put_object(Bucket="helical", Key="incoming/.keep", Body=b"")
    moto_s3.put_object(Bucket="helical", Key="incoming/notes.txt", Body=b"not a dataset")
    moto_s3.put_object(Bucket="helical", Key="incoming/a.h5ad", Body=b"a1")
    moto_s3.put_object(Bucket="helical", Key="incoming/b.h5ad", Body=b"b1")
    found = find_new(moto_s3, "helical")
    assert [o["key"] for o in found] == ["incoming/a.h5ad", "incoming/b.h5ad"]
    assert mark_seen(moto_s3, "helical", found) == 2
    assert find_new(moto_s3, "helical") == []
    assert mark_seen(moto_s3, "helical", found) == 0  # markers are created once (IfNoneMatch)
    moto_s3.put_object(Bucket="helical", Key="incoming/a.h5ad", Body=b"a2")  # new content, same key
    [again] = find_new(moto_s3, "helical")
    assert again["key"] == "incoming/a.h5ad" and again["etag"] != found[0]["etag"]


# Keys users upload (AWS CLI and S3 consoles take any UTF-8): pairs that clean to the same characters, percent
# signs that are not escapes, composed and decomposed accents, folders, and names that are already clean.
TRICKY_KEYS = [
    "incoming/c v2.h5ad", "incoming/c++ v2.h5ad", "incoming/c-v2.h5ad", "incoming/c  v2.h5ad",
    "incoming/é-ñ.h5ad", "incoming/ü-データ.h5ad", "incoming/e-n.h5ad", "incoming/e\u0301-n\u0303.h5ad",
    "incoming/a%20b.h5ad", "incoming/a b.h5ad", "incoming/a+b.h5ad", "incoming/a%2Bb.h5ad",
    "incoming/sub dir/Atlas v2.h5ad", "incoming/sub/dir.h5ad", "incoming/sub-dir.h5ad", "incoming/sub_dir.h5ad",
    "incoming/-lead.h5ad", "incoming/lead.h5ad", "incoming/" + "x" * 400 + ".h5ad", "incoming/" + "x" * 401 + ".h5ad",
    "elsewhere/c-v2.h5ad",
]
ETAGS = ['"d41d8cd98f00b204e9800998ecf8427e"', '"9b2cf535f27731c974343645a3985328-3"',
         '"9b2cf535f27731c974343645a3985328-12"']


def test_ingest_run_ids_are_injective_readable_and_valid():
    ids = {(key, etag): s3.ingest_run_id(key, etag) for key in TRICKY_KEYS for etag in ETAGS}
    assert len(set(ids.values())) == len(ids)  # no upload ever shares a run id with another
    for (key, etag), run_id in ids.items():
        assert re.match(RUN_ID_PATTERN, run_id) and len(run_id) <= 200, run_id
        assert s3.ingest_run_id(key, etag) == run_id  # deterministic: a second trigger is a no-op
    # already-clean keys keep the ids runs have today; cleaned ones stay readable, plus a hash of the exact key
    etag = ETAGS[0].strip('"')
    assert ids["incoming/c-v2.h5ad", ETAGS[0]] == f"ingest__c-v2.h5ad__{etag}"
    assert ids["incoming/c-v2.h5ad", ETAGS[1]] == "ingest__c-v2.h5ad__9b2cf535f27731c974343645a3985328-3"
    assert re.fullmatch(rf"ingest__c-v2.h5ad__{etag}-[0-9a-f]{{10}}", ids["incoming/c v2.h5ad", ETAGS[0]])
    assert re.fullmatch(rf"ingest__c-v2.h5ad__{etag}-[0-9a-f]{{10}}", ids["incoming/c++ v2.h5ad", ETAGS[0]])
    assert ids["incoming/é-ñ.h5ad", ETAGS[0]].startswith("ingest__e-n.h5ad__")
    assert ids["incoming/sub dir/Atlas v2.h5ad", ETAGS[0]].startswith(f"ingest__sub-dir-Atlas-v2.h5ad__{etag}-")


def test_chunk_and_run_prefixes_are_injective_in_the_exact_key(moto_s3):
    """Every tricky key uploaded with the same bytes (one as a real multipart upload, ETag "-2"): each
    gets its own run id, run prefix, chunk prefix and container name, all derived from key + ETag."""
    from helical_lib.runner import container_name

    keys = [k for k in TRICKY_KEYS if len(k) < 300]
    for key in keys:
        moto_s3.put_object(Bucket="helical", Key=key, Body=b"same bytes")
    upload = moto_s3.create_multipart_upload(Bucket="helical", Key="incoming/big parts.h5ad")
    parts = [{"PartNumber": n, "ETag": moto_s3.upload_part(
        Bucket="helical", Key="incoming/big parts.h5ad", UploadId=upload["UploadId"], PartNumber=n,
        Body=body)["ETag"]} for n, body in ((1, b"p" * 5 * 1024**2), (2, b"q"))]
    moto_s3.complete_multipart_upload(Bucket="helical", Key="incoming/big parts.h5ad",
                                      UploadId=upload["UploadId"], MultipartUpload={"Parts": parts})
    keys.append("incoming/big parts.h5ad")
    plans = []
    for key in keys:
        etag = s3.clean_etag(moto_s3.head_object(Bucket="helical", Key=key)["ETag"])
        run_id = s3.ingest_run_id(key, etag)
        plan = make_plan({**PARAMS, "data": f"s3://helical/{key}", "etag": etag}, run_id, SETTINGS)
        assert plan["run_id"] == run_id and plan["data"] == f"s3://helical/{key}" and plan["etag"] == etag
        plans.append(plan)
    assert plans[-1]["etag"].endswith("-2")
    for field in ("run_id", "run", "chunks"):
        assert len({p[field] for p in plans}) == len(plans), field
    names = {container_name("helical_finetune", "chunk", p["run_id"], 1).rsplit("-", 1)[0] for p in plans}
    assert len(names) == len(plans)
    for plan in plans:
        assert re.fullmatch(r"s3://helical/chunks/[A-Za-z0-9._-]+", plan["chunks"]), plan["chunks"]
    # a clean name directly under incoming/ keeps today's chunk prefix
    [clean] = [p for p in plans if p["data"] == "s3://helical/incoming/c-v2.h5ad"]
    assert clean["chunks"] == f"s3://helical/chunks/c-v2-{clean['etag'][:12]}"


def test_trigger_fires_on_a_new_upload(moto_s3, monkeypatch):
    import asyncio

    monkeypatch.setattr(s3, "client", lambda conn_id: moto_s3)
    trigger = NewObjectsTrigger("helical_s3", "helical", poll_interval=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "helical_lib.ingest.NewObjectsTrigger" and kwargs["poll_interval"] == 0.05

    async def scenario():
        pending = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.3)
        assert not pending.done()  # nothing new yet: keeps polling
        moto_s3.put_object(Bucket="helical", Key="incoming/c.h5ad", Body=b"c")
        return await asyncio.wait_for(pending, 5)

    event = asyncio.run(scenario())
    assert [o["key"] for o in event.payload["objects"]] == ["incoming/c.h5ad"]


PLAN = {"run_id": "r2", "data": "s3://helical/incoming/bad.h5ad", "etag": "e2", "profile": "cpu-small",
        "chunks": "s3://helical/chunks/bad-e2", "run": "s3://helical/runs/r2"}


def runner_said(client, key: str, exit_code: int = 65, error: str = "s3://helical/incoming/bad.h5ad is not a "
                "readable .h5ad (HDF5) file") -> None:
    client.put_object(Bucket="helical", Key=key, Body=json.dumps(
        {"status": "failed", "command": "chunk", "error": error, "exit_code": exit_code}))


def note_of(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket="helical", Key=f"{key}.error.json")["Body"].read())


def test_bad_upload_is_moved_to_quarantine_beside_its_reason(moto_s3):
    etag = moto_s3.put_object(Bucket="helical", Key="incoming/bad.h5ad", Body=b"garbage")["ETag"].strip('"')
    runner_said(moto_s3, "chunks/bad-e2/error.json")
    note = quarantine({**PLAN, "etag": etag}, SETTINGS)
    assert note["object"] == "s3://helical/quarantine/bad.h5ad" and note["moved"]
    moved = moto_s3.get_object(Bucket="helical", Key="quarantine/bad.h5ad")
    assert moved["Body"].read() == b"garbage"  # byte for byte
    assert "Contents" not in moto_s3.list_objects_v2(Bucket="helical", Prefix="incoming/")  # moved, not copied
    written = note_of(moto_s3, "quarantine/bad.h5ad")
    assert written["error"] == "s3://helical/incoming/bad.h5ad is not a readable .h5ad (HDF5) file"
    assert written["source"] == PLAN["data"] and written["etag"] == etag and written["run_id"] == "r2"
    assert written["error_url"] == "s3://helical/chunks/bad-e2/error.json" and written["command"] == "chunk"
    assert "\n" not in written["error"]
    # a retried task finds the move done and changes nothing
    assert quarantine({**PLAN, "etag": etag}, SETTINGS)["object"] == "s3://helical/quarantine/bad.h5ad"
    assert moto_s3.get_object(Bucket="helical", Key="quarantine/bad.h5ad")["Body"].read() == b"garbage"


def test_a_bad_object_outside_incoming_is_left_where_it_is(moto_s3):
    """A form-triggered run on the user's own dataset (not an upload) gets the reason, never a move."""
    etag = moto_s3.put_object(Bucket="helical", Key="datasets/atlas.h5ad", Body=b"garbage")["ETag"].strip('"')
    runner_said(moto_s3, "chunks/bad-e2/error.json")
    note = quarantine({**PLAN, "data": "s3://helical/datasets/atlas.h5ad", "etag": etag}, SETTINGS)
    assert note["moved"] is False and note["object"] is None and "left where it is" in note["note"]
    assert moto_s3.get_object(Bucket="helical", Key="datasets/atlas.h5ad")["Body"].read() == b"garbage"
    assert note_of(moto_s3, "quarantine/atlas.h5ad")["source"] == "s3://helical/datasets/atlas.h5ad"
    assert [o["Key"] for o in moto_s3.list_objects_v2(Bucket="helical", Prefix="quarantine/")["Contents"]] == [
        "quarantine/atlas.h5ad.error.json"]


def test_a_second_bad_upload_of_the_same_name_never_overwrites_the_first(moto_s3):
    first = moto_s3.put_object(Bucket="helical", Key="incoming/bad.h5ad", Body=b"first")["ETag"].strip('"')
    runner_said(moto_s3, "chunks/bad-e2/error.json")
    quarantine({**PLAN, "etag": first}, SETTINGS)
    second = moto_s3.put_object(Bucket="helical", Key="incoming/bad.h5ad", Body=b"second")["ETag"].strip('"')
    note = quarantine({**PLAN, "etag": second, "run_id": "r3"}, SETTINGS)
    assert note["object"] == f"s3://helical/quarantine/bad.{second[:12]}.h5ad"
    assert moto_s3.get_object(Bucket="helical", Key="quarantine/bad.h5ad")["Body"].read() == b"first"
    assert moto_s3.get_object(Bucket="helical", Key=f"quarantine/bad.{second[:12]}.h5ad")["Body"].read() == b"second"
    assert note_of(moto_s3, "quarantine/bad.h5ad")["etag"] == first


def test_a_newer_upload_under_the_same_key_is_left_alone(moto_s3):
    """The run judged one version; if the key now holds another, that one has its own run: keep it."""
    old = moto_s3.put_object(Bucket="helical", Key="incoming/bad.h5ad", Body=b"old")["ETag"].strip('"')
    moto_s3.put_object(Bucket="helical", Key="incoming/bad.h5ad", Body=b"new, maybe fine")
    runner_said(moto_s3, "chunks/bad-e2/error.json")
    note = quarantine({**PLAN, "etag": old}, SETTINGS)
    assert note["moved"] is False and note["object"] is None
    assert moto_s3.get_object(Bucket="helical", Key="incoming/bad.h5ad")["Body"].read() == b"new, maybe fine"
    assert note_of(moto_s3, "quarantine/bad.h5ad")["etag"] == old
    assert [o["Key"] for o in moto_s3.list_objects_v2(Bucket="helical", Prefix="quarantine/")["Contents"]] == [
        "quarantine/bad.h5ad.error.json"]


def test_uploads_too_large_or_deleted_before_their_run_are_quarantined_by_check_input(moto_s3, tmp_path,
                                                                                       monkeypatch):
    from conftest import REPO
    from helical_lib.plan import BadInput, checked_plan

    text = (REPO / "config" / "profiles.yaml").read_text().replace("max_input_bytes: 4g", "max_input_bytes: 10")
    (tmp_path / "profiles.yaml").write_text(text)
    monkeypatch.setenv("HELICAL_PROFILES", str(tmp_path / "profiles.yaml"))
    etag = moto_s3.put_object(Bucket="helical", Key="incoming/big.h5ad", Body=b"x" * 11)["ETag"].strip('"')
    with pytest.raises(BadInput, match="over profile cpu-small's cap .*quarantined: s3://helical/quarantine/big.h5ad"):
        checked_plan({**PARAMS, "data": "s3://helical/incoming/big.h5ad", "etag": etag}, "ingest__big", SETTINGS)
    assert moto_s3.get_object(Bucket="helical", Key="quarantine/big.h5ad")["Body"].read() == b"x" * 11
    assert "over profile cpu-small's cap" in note_of(moto_s3, "quarantine/big.h5ad")["error"]

    with pytest.raises(BadInput, match="not found .*nothing left to move"):
        checked_plan({**PARAMS, "data": "s3://helical/incoming/gone.h5ad", "etag": "abc"}, "ingest__gone", SETTINGS)
    note = note_of(moto_s3, "quarantine/gone.h5ad")
    assert "not found" in note["error"] and note["moved"] is False and note["command"] == "check_input"

    # a URL mistyped in the trigger form is no upload: it fails with the reason, nothing is written
    with pytest.raises(BadInput, match="not found"):
        checked_plan({**PARAMS, "data": "s3://helical/incoming/typo.h5ad"}, "manual__1", SETTINGS)
    assert "Contents" not in moto_s3.list_objects_v2(Bucket="helical", Prefix="quarantine/typo")


def test_transient_failures_quarantine_nothing(moto_s3):
    from helical_lib.plan import quarantine

    moto_s3.put_object(Bucket="helical", Key="incoming/bad.h5ad", Body=b"fine")
    assert quarantine(PLAN, SETTINGS) is None
    runner_said(moto_s3, "runs/r2/error.json", exit_code=69, error="S3 unreachable")
    assert quarantine(PLAN, SETTINGS) is None
    assert "Contents" not in moto_s3.list_objects_v2(Bucket="helical", Prefix="quarantine/")
    assert moto_s3.get_object(Bucket="helical", Key="incoming/bad.h5ad")["Body"].read() == b"fine"


def test_a_bad_file_in_the_data_folder_gets_its_reason_but_stays_where_it_is(moto_s3, tmp_path):
    local = tmp_path / "datasets" / "lab.h5ad"
    local.parent.mkdir()
    local.write_bytes(b"not hdf5")
    runner_said(moto_s3, "chunks/lab-e3/error.json", error="/data/datasets/lab.h5ad is not a readable .h5ad")
    plan = {**PLAN, "data": "/data/datasets/lab.h5ad", "etag": "e3", "chunks": "s3://helical/chunks/lab-e3"}
    note = quarantine(plan, Settings.from_env({"HELICAL_DATA_DIR": str(tmp_path)}))
    assert note["moved"] is False and note["object"] is None
    assert note_of(moto_s3, "quarantine/lab.h5ad")["error"] == "/data/datasets/lab.h5ad is not a readable .h5ad"
    assert local.read_bytes() == b"not hdf5"
