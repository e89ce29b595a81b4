"""The README's first command on a fresh clone with nothing cached: `make demo` must install everything it
needs itself (issue 11: a cached venv once hid that the project was never installed into it).

The clone is this working tree as a new user would have it (HEAD, plus uncommitted and untracked files that
git does not ignore: no venv links, no data/, no build/), and its venv cache is a new empty folder. The
Docker engine and the runner image are shared with the machine (an image build is keyed by the content
hash of what goes into it, so a clone of the same tree reuses it; building it cold is covered by
tests/docker)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def fresh_clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=300)
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD", "--binary"], check=True, capture_output=True).stdout
    if diff:
        subprocess.run(["git", "-C", str(dest), "apply", "--whitespace=nowarn"], input=diff, check=True)
    untracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard", "-z"],
                               check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, untracked):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return dest


def ci_demo() -> tuple[Path, Path, subprocess.CompletedProcess] | None:
    """The `make demo` that .ci/run has just run, if it ran on this very tree from a clean clone with an
    empty venv cache: that is this test's run already, so CI checks its log and outputs instead of building a
    second full cache beside the first (about 15 minutes and 15 GB). .ci/run exports the log and the commit
    only when `git status --ignored` was empty before the demo and the cache was a new folder."""
    log, commit, cache = (os.environ.get(k, "") for k in
                          ("HELICAL_CI_DEMO_LOG", "HELICAL_CI_DEMO_COMMIT", "HELICAL_AIRFLOW_CACHE"))
    if not (log and commit and cache and Path(log).is_file()):
        return None
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    if head != commit or changed.strip():  # the tree moved since the demo ran: run it again from a fresh clone
        print(f"\nfresh: the tree is not the one .ci/run's demo ran on (HEAD {head[:12]}, demo {commit[:12]}; "
              f"changed: {' '.join(changed.split()[:6]) or 'nothing'}): running make demo in a fresh clone")
        return None
    print(f"\nfresh: checking the make demo .ci/run ran on this clean clone with an empty cache ({log})")
    return REPO, Path(cache), subprocess.CompletedProcess(["make", "demo"], 0, Path(log).read_text(), "")


@pytest.fixture(scope="module")
def demo():
    ran = ci_demo()
    if ran is not None:
        yield ran
        return
    work = Path(tempfile.mkdtemp(prefix="helical-fresh-"))
    clone = fresh_clone(work / "clone")
    cache = work / "cache"  # empty: every venv is built from the lock files
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HELICAL_", "VIRTUAL_ENV", "PYTHON", "AIRFLOW", "AWS_"))}
    env["HELICAL_AIRFLOW_CACHE"] = str(cache)
    result = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=2400)
    log = REPO / "build" / "fresh-clone-demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    yield clone, cache, result
    shutil.rmtree(work, ignore_errors=True)


def test_make_demo_succeeds_in_runner_containers_from_an_empty_cache(demo):
    clone, cache, result = demo
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make demo failed on a fresh clone (log: build/fresh-clone-demo.log):\n{output[-3000:]}"
    assert "building the runner virtualenv" in output and "installing this clone into the runner virtualenv" in output
    assert "runner steps run in helical-runner:cpu containers" in output
    match = re.search(r"run success, runner steps in helical-runner:cpu containers through the socket proxy; "
                      r"its outputs are in (\S+)/", output)
    assert match, output[-2000:]
    run_dir = clone / match.group(1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary, "summary.json is empty"
    reports = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("report.json"))
    assert "report.json" in reports and "predict/report.json" in reports, reports
    finetune = json.loads((run_dir / "report.json").read_text())
    assert finetune["status"] == "succeeded"
    assert "macro-F1" in output and "precision  recall" in output  # the per-class table is printed

    # what a biologist opens next (issue 16): the annotated AnnData, the UMAP, the report pages, and curves
    # with one point per step
    for name in ("predict/predictions.h5ad", "predict/umap.png", "report.html", "predict/report.html",
                 "training_curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert len(finetune["step_history"]["loss"]) == finetune["steps"] > 1
    opened = subprocess.run(
        [str(clone / ".venv-runner" / "bin" / "python"), "-c",
         "import sys, json, anndata; a = anndata.read_h5ad(sys.argv[1]); "
         "print(json.dumps([a.n_obs, list(a.obsm['X_geneformer'].shape), list(a.obs.columns)]))",
         str(run_dir / "predict" / "predictions.h5ad")], capture_output=True, text=True, check=True)
    n_obs, embeddings, columns = json.loads(opened.stdout)
    assert n_obs == 2000 and embeddings[0] == 2000 and embeddings[1] > 0
    assert "predicted_cell_type" in columns and "prediction_confidence" in columns and "cell_type" in columns

    # the console script the runner steps need now exists in the clone's own venv
    assert (clone / ".venv-runner" / "bin" / "helical-runner").exists()
    assert Path(os.readlink(clone / ".venv-runner")).is_relative_to(cache)
