"""Live: a real Airflow 3.3 (api-server, dag-processor, scheduler, LocalExecutor; .venv-airflow) runs a
succeeding and a failing DAG with the StatsD settings docs/monitoring.md asks for, and the packets it sends go
through monitoring/statsd/mapping.yml (statsd_exporter stand-in: monitoring/statsd/statsd_exporter.py). Every
Airflow metric the dashboards and rules use must come out, with the labels the panels group by, and the
committed capture in tests/monitoring/data/ must still be representative of what Airflow sends."""

from __future__ import annotations

import pytest

from airflow_capture import AIRFLOW_BIN, capture, distinct
from test_statsd_mapping import captured_lines, mapped_names, used_airflow_names

pytestmark = [pytest.mark.slow, pytest.mark.airflow]


@pytest.fixture(scope="module")
def live_lines():
    if not AIRFLOW_BIN.exists():
        pytest.skip("no .venv-airflow (scripts/suite-monitoring.sh builds it from requirements/airflow.lock)")
    return capture()


def test_live_packets_produce_every_metric_used(live_lines):
    produced, exporter = mapped_names(live_lines)
    assert not exporter.conflicts
    missing = {name: where for name, where in used_airflow_names().items() if name not in produced}
    assert not missing, f"used but not produced from a live Airflow: {missing}"
    finished = {dict(labels)["state"] for name, labels in exporter.series if name == "airflow_dagrun_duration_seconds"}
    assert finished == {"success", "failed"}
    task_ids = {dict(labels)["task_id"] for name, labels in exporter.series if name == "airflow_ti_finish_total"}
    assert task_ids == {"step", "group.ok", "group.boom"}  # task-group ids keep their dot


def test_committed_capture_is_still_what_airflow_sends(live_lines):
    live, _ = mapped_names(live_lines)
    committed, _ = mapped_names(captured_lines())
    assert committed <= live, f"committed capture has names a live Airflow no longer sends: {committed - live}"
    assert len(distinct(live_lines)) > 40
