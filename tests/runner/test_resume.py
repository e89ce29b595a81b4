"""A fine-tune killed mid-stream resumes from its last checkpoint and ends exactly where an
uninterrupted run ends: same steps, same cells, same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUCKET, run_cli, wait_for
from helical_runner.data.synthetic import make_h5ad

pytestmark = pytest.mark.slow


def finetune_args(data: str, output: str, *batching: str) -> list[str]:
    return ["finetune", "--data", data, "--label-column", "cell_type", "--output", output, "--precision", "fp32",
            "--batch-size", "16", "--lr", "1e-3", "--epochs", "2", "--cells-per-chunk", "150", *batching]


def report(s3, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/report.json")["Body"].read())


# a token budget gives batches of varying size (these cells have about 140 tokens, give or take a few)
@pytest.mark.parametrize("batching", [[], ["--tokens-per-batch", "4000"]], ids=["16-cells", "4000-tokens"])
def test_killed_finetune_resumes_from_its_checkpoint(s3, tiny_model, tmp_path, batching):
    data = make_h5ad(tmp_path / "cells.h5ad", n_cells=900, n_genes=1000, n_types=3, genes_per_cell=120, seed=3)
    name = "-".join(["resume", *batching[1:]])
    s3.upload_file(str(data), BUCKET, f"incoming/{name}.h5ad")
    source = f"s3://{BUCKET}/incoming/{name}.h5ad"
    args = lambda run: finetune_args(source, f"s3://{BUCKET}/runs/{name}-{run}", *batching)  # noqa: E731

    straight = run_cli(*args("straight"))
    assert straight.returncode == 0, straight.stderr

    scratch = tmp_path / "scratch"  # the data folder's scratch/, as runner containers mount it
    env = {**os.environ, "HELICAL_SCRATCH": str(scratch)}
    child = subprocess.Popen([sys.executable, "-m", "helical_runner", *args("killed")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        checkpoint = f"runs/{name}-killed/checkpoint.pt"
        wait_for(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=checkpoint).get("KeyCount", 0),
                 timeout=300, interval=0.1)
        child.send_signal(signal.SIGKILL)  # no chance to clean up, as with an OOM kill or a lost node
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{name}-killed/report.json").get("KeyCount", 0) == 0
    [abandoned] = scratch.iterdir()  # the killed step's chunks: nobody was left to remove them
    assert any(abandoned.iterdir()), abandoned

    resumed = run_cli(*args("killed"), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stderr
    assert list(scratch.iterdir()) == []  # the retry swept the killed step's scratch, then its own

    a, b = report(s3, f"runs/{name}-straight"), report(s3, f"runs/{name}-killed")
    assert b["resumed_from"] is not None and b["resumed_from"]["step"] > 0
    assert b["steps"] == a["steps"]
    assert b["cells"] == a["cells"]  # every cell counted once per epoch, none twice
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-4)
    assert b["step_history"]["loss"] == pytest.approx(a["step_history"]["loss"], rel=1e-4)  # every step, once
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)
    if batching:  # the budget, not --batch-size, made the batches: about 28 cells each, not 16
        assert a["steps"] < a["cells"]["trained_total"] / 16 and a["config"]["tokens_per_batch"] == 4000


def test_rerun_of_a_finished_finetune_does_nothing(s3, tiny_model, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/done.h5ad")
    args = finetune_args(f"s3://{BUCKET}/incoming/done.h5ad", f"s3://{BUCKET}/runs/done")
    assert run_cli(*args).returncode == 0
    first = s3.head_object(Bucket=BUCKET, Key="runs/done/report.json")["LastModified"]
    again = run_cli(*args)
    assert again.returncode == 0 and "already holds a finished run" in again.stderr
    assert s3.head_object(Bucket=BUCKET, Key="runs/done/report.json")["LastModified"] == first


def test_checkpoint_of_other_settings_is_not_silently_reused(s3, tiny_model, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/other.h5ad")
    args = finetune_args(f"s3://{BUCKET}/incoming/other.h5ad", f"s3://{BUCKET}/runs/other")
    assert run_cli(*args).returncode == 0
    s3.delete_object(Bucket=BUCKET, Key="runs/other/report.json")  # as if it had died after its last checkpoint
    changed = run_cli(*[a if a != "1e-3" else "5e-4" for a in args])
    assert changed.returncode == 65
    assert "belongs to a run with other settings (config)" in changed.stderr.strip().splitlines()[-1]


def test_a_new_step_sweeps_only_scratch_that_no_live_step_holds(tmp_path, monkeypatch):
    """Another process's live scratch folder (its lock held), a folder being created right now (no lock file
    yet), and other programs' folders survive; a killed step's folder (lock file, nobody holding it) goes."""
    from helical_runner.runs import LOCK_NAME, Scratch

    monkeypatch.setenv("HELICAL_SCRATCH", str(tmp_path))
    live = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from helical_runner.runs import Scratch; s = Scratch.create('live'); "
        "print(s.path, flush=True); sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "HELICAL_SCRATCH": str(tmp_path)})
    try:
        live_folder = Path(live.stdout.readline().strip())
        killed = tmp_path / "helical-killed-abc123"
        (killed / "chunks").mkdir(parents=True)
        (killed / LOCK_NAME).touch()
        starting = tmp_path / "helical-starting-xyz"
        starting.mkdir()
        other = tmp_path / "someone-elses"
        other.mkdir()

        mine = Scratch.create("new")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [live_folder.name, starting.name, other.name, mine.path.name])
        mine.cleanup()
        assert not mine.path.exists() and live_folder.is_dir()
    finally:
        live.stdin.close()
        live.wait(timeout=30)
