"""The Pushgateway has no TTL: monitoring/pushgateway/pushgateway_janitor.py against a real Pushgateway with
groups pushed by the runner's own RunMetrics (helical_runner/outputs/metrics.py), and what Prometheus shows after."""

from __future__ import annotations

import sys
import time

from conftest import MON, grafana_escape, load_dashboards, queries, substitute

sys.path.insert(0, str(MON / "pushgateway"))
import pushgateway_janitor  # noqa: E402


def push_run(gateway: str, run_id: str, command: str, final: str | None):
    from helical_runner.outputs.metrics import RunMetrics

    metrics = RunMetrics(command, run_id, {"dag_id": "helical_finetune", "task_id": f"on_cpu.{command}"},
                         gateway=gateway, interval=0.5)
    metrics.update(chunks_total=4, chunks_done=2)
    metrics.start()
    if final:
        metrics.finish(final)
    else:  # a runner killed mid-run: no final push, the thread just stops
        metrics._stop.set()
        metrics._thread.join()
    return metrics


def keys(groups):
    return {(g["labels"]["run_id"], g["labels"]["command"]) for g in groups}


def test_janitor_deletes_finished_groups_only(pushgateway):
    push_run(pushgateway, "done-ok", "finetune", "succeeded")
    push_run(pushgateway, "done-bad", "chunk", "failed")
    push_run(pushgateway, "live+1", "finetune", None)
    found = {(g["labels"]["run_id"], g["labels"]["command"]): g["status"] for g in pushgateway_janitor.groups(pushgateway)}
    assert found == {("done-ok", "finetune"): "succeeded", ("done-bad", "chunk"): "failed",
                     ("live+1", "finetune"): "running"}
    # finished a moment ago: kept for KEEP_FINISHED_SECONDS
    assert pushgateway_janitor.sweep(pushgateway, keep_finished=600, stale_running=21600) == []
    # dry run deletes nothing
    assert len(pushgateway_janitor.sweep(pushgateway, keep_finished=0, stale_running=21600, dry_run=True)) == 2
    assert len(pushgateway_janitor.groups(pushgateway)) == 3
    deleted = pushgateway_janitor.sweep(pushgateway, keep_finished=0, stale_running=21600)
    assert keys(deleted) == {("done-ok", "finetune"), ("done-bad", "chunk")}
    assert keys(pushgateway_janitor.groups(pushgateway)) == {("live+1", "finetune")}
    # a 'running' group silent for longer than stale_running goes too
    later = time.time() + 21601
    assert keys(pushgateway_janitor.sweep(pushgateway, 600, 21600, now=later)) == {("live+1", "finetune")}
    assert pushgateway_janitor.groups(pushgateway) == []


def test_run_id_mode_and_history_stays_in_prometheus(prometheus, pushgateway):
    """What a DAG's last task can call; afterwards the Runner dashboard's table still lists the run."""
    run_id = "manual__2026-11-23T11:00:00+00:00"
    push_run(pushgateway, run_id, "chunk", "succeeded")
    push_run(pushgateway, run_id, "finetune", "succeeded")
    prometheus.wait_series(f'helical_runner_status{{run_id="{run_id}",command="finetune",status="succeeded"}} == 1')
    assert pushgateway_janitor.main(["--url", pushgateway, "--run-id", run_id]) == 0
    assert run_id not in {g["labels"]["run_id"] for g in pushgateway_janitor.groups(pushgateway)}
    # the scrape after the delete no longer has the group ...
    prometheus.wait_series(f'absent(helical_runner_status{{run_id="{run_id}"}})', timeout=15)
    # ... and the Recent runs table, reading Prometheus' history, still shows both steps
    (table,) = [t for p, t in queries(load_dashboards()["runner"]) if p["title"] == "Recent runs" and t["refId"] == "A"]
    rows = prometheus.series(substitute(table["expr"], run=grafana_escape(run_id)))
    assert {(r["metric"]["command"], r["metric"]["status"]) for r in rows} == {("chunk", "succeeded"),
                                                                               ("finetune", "succeeded")}
