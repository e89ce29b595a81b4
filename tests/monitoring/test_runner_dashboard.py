"""A real runner run (`helical-runner chunk` then a short `finetune`, tiny model, synthetic cells) pushes to a
real Pushgateway, a real Prometheus scrapes it with the project's config and rules, and every Runner-dashboard
query returns data for that run, as Grafana would send it (run variable set to the run, regex-escaped).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from conftest import _CACHE_PREFIX, MODEL, grafana_escape, load_dashboards, queries, substitute, wait_for

RUN_ID = "manual__2026-11-23T10:00:00+00:00"  # an Airflow-style id: regex metacharacters included
DAG_ID, TASK_ID = "helical_finetune", "on_cpu.finetune"


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helical_runner", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


@pytest.fixture(scope="module")
def runner_run(prometheus, pushgateway, tmp_path_factory):
    """`chunk` then a short `finetune` on synthetic cells with the tiny model, pushing every second."""
    from helical_runner.data.synthetic import make_h5ad, write_tiny_geneformer

    write_tiny_geneformer(_CACHE_PREFIX, MODEL)
    work = tmp_path_factory.mktemp("runner")
    cells = make_h5ad(work / "cells.h5ad", n_cells=300, n_genes=2000, n_types=3, genes_per_cell=150, seed=3)
    env = {"PUSHGATEWAY_URL": pushgateway, "PUSH_INTERVAL_SECONDS": "1", "HELICAL_DAG_ID": DAG_ID,
           "HELICAL_TASK_ID": TASK_ID, "HELICAL_SCRATCH": str(work / "scratch"),
           "CACHE_DIR_HELICAL_PREFIX": str(_CACHE_PREFIX), "TQDM_DISABLE": "1"}
    chunked = run_cli("chunk", "--input", str(cells), "--output", str(work / "chunks"), "--cells-per-chunk", "100",
                      "--run-id", RUN_ID, env={**env, "HELICAL_TASK_ID": "on_cpu.chunk"})
    assert chunked.returncode == 0, chunked.stderr
    started = time.time()
    tuned = run_cli("finetune", "--data", str(work / "chunks" / "manifest.json"), "--label-column", "cell_type",
                    "--output", str(work / "run"), "--run-id", RUN_ID, "--epochs", "2", "--batch-size", "16",
                    "--lr", "2e-3", "--precision", "fp32", "--profile", "cpu-small", env=env)
    assert tuned.returncode == 0, tuned.stderr
    # Prometheus has the final push (status succeeded) once it scraped after the run ended, and the recording
    # rules reflect it once every rule group has been evaluated after that scrape
    prometheus.wait_series(f'helical_runner_status{{run_id="{RUN_ID}",command="finetune",status="succeeded"}} == 1')
    scraped = datetime.now(timezone.utc)

    def evaluated_since_scrape() -> bool:
        groups = prometheus.api("rules")["data"]["groups"]
        return bool(groups) and all(rfc3339(group["lastEvaluation"]) > scraped for group in groups)

    wait_for(evaluated_since_scrape, what="a rule evaluation after the final push")
    prometheus.wait_series("run_id:helical_runner_progress:ratio")
    return {"seconds": time.time() - started}


def rfc3339(text: str) -> datetime:
    """Prometheus' timestamps (nanoseconds, Z) as an aware datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00"))


pytestmark = pytest.mark.slow


def test_every_runner_panel_has_data_for_the_run(prometheus, runner_run):
    board = load_dashboards()["runner"]
    run = grafana_escape(RUN_ID)
    empty, foreign = [], []
    for panel, target in queries(board):
        expr = substitute(target["expr"], run=run)
        result = prometheus.series(expr) if target.get("instant") else prometheus.series(expr, range_query=True)
        if not result:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
        elif "$run" in target["expr"] and any(r["metric"].get("run_id") not in (None, RUN_ID) for r in result):
            foreign.append(panel["title"])
    assert not empty, "Runner panels without data:\n" + "\n".join(empty)
    assert not foreign


def test_variables_offer_the_run(prometheus, runner_run):
    answer = prometheus.api("label/run_id/values", **{"match[]": substitute('helical_runner_info{dag_id=~"$dag"}')})
    assert RUN_ID in answer["data"]
    answer = prometheus.api("label/dag_id/values", **{"match[]": "helical_runner_info"})
    assert DAG_ID in answer["data"]


def test_run_values_are_real(prometheus, runner_run):
    run = f'run_id="{RUN_ID}",command="finetune"'
    (progress,) = prometheus.series(f"run_id:helical_runner_progress:ratio{{{run}}}")
    assert float(progress["value"][1]) == 1.0                       # 3 chunks x 2 epochs, all done
    (total,) = prometheus.series(f"helical_runner_chunks_total{{{run}}}")
    assert float(total["value"][1]) == 6
    (accuracy,) = prometheus.series(f"helical_runner_validation_accuracy{{{run}}}")
    assert 0 <= float(accuracy["value"][1]) <= 1
    (limit,) = prometheus.series(f"helical_runner_memory_limit_bytes{{{run}}}")
    assert float(limit["value"][1]) == 8 * 2**30                     # cpu-small's memory_limit: 8g
    (info,) = prometheus.series(f"helical_runner_info{{{run}}}")
    assert info["metric"]["dag_id"] == DAG_ID and info["metric"]["task_id"] == TASK_ID
    # a finished run is not live, though its group still sits on the gateway
    assert not prometheus.series(f"run_id:helical_runner_live:bool{{{run}}}")
    (rows,) = prometheus.series(f'max by (run_id, command, status) (helical_runner_status{{{run}}} == 1)')
    assert rows["metric"]["status"] == "succeeded"
