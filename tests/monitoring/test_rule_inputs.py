"""The promtool tests' input series are what the stack really exports: Airflow series with the names and label
names the mapping makes of real Airflow packets, runner series with the runner's own metric names
(helical_runner/outputs/metrics.py) and the Pushgateway's group labels, cAdvisor series with the DAGs' labels."""

from __future__ import annotations

import re

import yaml

from conftest import PROM_DIR
from test_statsd_mapping import captured_lines, mapped_names

PUSH_GROUP = {"job", "run_id", "command", "instance"}


def input_series() -> list[tuple[str, set[str], str]]:
    found = []
    for path in sorted((PROM_DIR / "tests").glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for item in test["input_series"]:
                name, _, body = item["series"].partition("{")
                labels = set(re.findall(r"(\w+)=\"", body))
                found.append((name, labels, path.name))
    return found


def runner_metric_names() -> set[str]:
    from helical_runner.outputs.metrics import RunMetrics

    metrics = RunMetrics("finetune", "r", {}, gateway="")
    metrics._refresh()
    return {family.name for family in metrics.registry.collect()}


def test_airflow_inputs_match_the_mapping():
    _, exporter = mapped_names(captured_lines())
    for name, labels, where in input_series():
        if not name.startswith("airflow_"):
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name) if "duration_seconds" in name else name
        assert base in exporter.kinds, f"{where}: {name} is not produced by the mapping"
        assert labels == set(exporter.kinds[base][1]), f"{where}: {name} labels {labels} != {exporter.kinds[base][1]}"


def test_runner_inputs_match_the_runner_and_the_pushgateway():
    names = runner_metric_names() | {"push_time_seconds"}
    for name, labels, where in input_series():
        if name.startswith("helical_runner_") or name == "push_time_seconds":
            assert name in names, f"{where}: the runner pushes no {name}"
            extra = {"status"} if name == "helical_runner_status" else set()
            assert labels == PUSH_GROUP | extra, f"{where}: {name} labels {labels}"


def test_container_inputs_use_cadvisor_labels():
    for name, labels, where in input_series():
        if name.startswith("container_"):
            assert {"id", "name", "image"} <= labels, where
            assert all(l in {"id", "name", "image"} or l.startswith("container_label_") for l in labels), where
