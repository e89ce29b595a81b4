"""monitoring/statsd/mapping.yml against the StatsD packets a real Airflow 3.3.2 sends.

statsd_exporter is not installable here: monitoring/statsd/statsd_exporter.py implements its documented mapping
semantics (checked first against the examples of the exporter's README), and the packets captured from a real
Airflow (tests/monitoring/data/, refreshed live by test_airflow_capture.py) go through the project's mapping.
Every Airflow metric a dashboard, a rule or a promtool test input names must come out of that.
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import MAPPING, PACKETS, PROM_DIR, load_dashboards, queries
from statsd_exporter import Event, Exporter, Mapping, parse_line



def airflow_names(text: str) -> set[str]:
    """Metric names (airflow_*) a PromQL text uses; histogram suffixes folded onto the base name."""
    names = set(re.findall(r"(?<![:\w])airflow_[a-z_]+(?![:\w])", text))  # not parts of rule names a:b:c
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith(("airflow_dagrun_duration_seconds",
                                                                      "airflow_task_duration_seconds")) else n
            for n in names}


def mapped_names(lines) -> tuple[set[str], Exporter]:
    exporter = Exporter(Mapping(MAPPING))
    for line in lines:
        if line and not line.startswith("#"):
            exporter.feed(line)
    return exporter.names(), exporter


def captured_lines() -> list[str]:
    return PACKETS.read_text().splitlines()


def used_airflow_names() -> dict[str, str]:
    """Every airflow_* name the dashboards, rules, alerts and rule tests use -> where."""
    used = {}
    for name, board in load_dashboards().items():
        for panel, target in queries(board):
            for metric in airflow_names(target["expr"]):
                used.setdefault(metric, f"dashboard {name}: {panel['title']}")
        for var in board["templating"]["list"]:
            for metric in airflow_names(var["definition"]):
                used.setdefault(metric, f"dashboard {name}: variable {var['name']}")
    for path in sorted(PROM_DIR.glob("*/*.yml")):
        text = path.read_text()
        for metric in airflow_names(text):
            used.setdefault(metric, str(path.relative_to(PROM_DIR)))
    return used


# --- the stand-in follows statsd_exporter's documented behaviour ------------------------------------------

def test_stand_in_reproduces_the_readme_glob_examples(tmp_path):
    """The three examples of statsd_exporter's README, "Glob matching"."""
    config = tmp_path / "m.yml"
    config.write_text(yaml.safe_dump({"mappings": [
        {"match": "test.dispatcher.*.*.*", "name": "dispatcher_events_total",
         "labels": {"processor": "$1", "action": "$2", "outcome": "$3", "job": "test_dispatcher"}},
        {"match": "*.signup.*.*", "name": "signup_events_total",
         "labels": {"provider": "$2", "outcome": "$3", "job": "${1}_server"}}]}))
    mapping = Mapping(config)

    def one(line):
        (event,) = parse_line(line)
        return mapping.map(event)

    first = one("test.dispatcher.FooProcessor.send.success:1|c")
    assert (first.name, first.labels) == ("dispatcher_events_total", {
        "processor": "FooProcessor", "action": "send", "outcome": "success", "job": "test_dispatcher"})
    second = one("foo_product.signup.facebook.failure:1|c")
    assert (second.name, second.labels) == ("signup_events_total", {
        "provider": "facebook", "outcome": "failure", "job": "foo_product_server"})
    third = one("test.web-server.foo.bar:1|c")
    assert (third.name, third.labels) == ("test_web_server_foo_bar", {})


def test_stand_in_parses_tags_timers_rates_and_drops(tmp_path):
    config = tmp_path / "m.yml"
    config.write_text(yaml.safe_dump({"mappings": [
        {"match": "a.*", "name": "first_$1"}, {"match": "a.b", "name": "never"},  # first match wins
        {"match": "x.y", "name": "x_y", "match_metric_type": "gauge"},
        {"match": ".", "match_type": "regex", "action": "drop", "name": "dropped"}]}))
    mapping = Mapping(config)
    (event,) = parse_line("a.b,dag_id=d,task_id=t.x:250|ms")
    assert event == Event("a.b", 0.25, "observer", "ms", {"dag_id": "d", "task_id": "t.x"})
    assert mapping.map(event).name == "first_b"
    (counter,) = parse_line("a.c:1|c|@0.5|#state:ok")
    assert counter.value == 2 and counter.tags == {"state": "ok"}
    assert mapping.map(parse_line("x.y:1|c")[0]) is None          # wrong type: falls through to the drop
    assert mapping.map(parse_line("x.y:3|g")[0]).name == "x_y"
    assert mapping.map(parse_line("a.b.c:1|c")[0]) is None        # `*` is one component only


# --- the project's mapping on real Airflow packets ----------------------------------------------------------

def test_captured_packets_come_from_airflow_3_3_with_tags():
    lines = [l for l in captured_lines() if l and not l.startswith("#")]
    assert len(lines) > 40
    assert any(l.startswith("airflow.ti.finish,dag_id=") for l in lines)
    assert any(l.startswith("airflow.dagrun.duration.") and ",dag_id=" in l for l in lines)


def test_every_airflow_name_used_is_produced_by_the_mapping_from_real_packets():
    produced, _ = mapped_names(captured_lines())
    missing = {name: where for name, where in used_airflow_names().items() if name not in produced}
    assert not missing, f"used but never produced from Airflow's packets: {missing}"


def test_mapping_keeps_only_what_is_used_and_labels_stay_consistent():
    produced, exporter = mapped_names(captured_lines())
    assert not exporter.conflicts  # the real exporter would refuse a metric whose label names change
    unused = produced - set(used_airflow_names())
    assert not unused, f"mapped but used by no panel or rule (drop them): {unused}"
    # legacy names with ids in the path never become metrics
    assert not [n for n in produced if "mon_probe" in n or "default_pool" in n]


@pytest.mark.parametrize("metric, labels", [
    ("airflow_ti_finish_total", {"dag_id", "task_id", "state"}),
    ("airflow_dagrun_duration_seconds", {"dag_id", "state", "run_type"}),
    ("airflow_task_duration_seconds", {"dag_id", "task_id"}),
    ("airflow_heartbeat_total", {"component"}),
    ("airflow_pool_starving_tasks", {"pool_name"}),
    ("airflow_executor_open_slots", {"executor_class_name", "status"}),
])
def test_panel_labels_come_from_the_packets(metric, labels):
    _, exporter = mapped_names(captured_lines())
    assert set(exporter.kinds[metric][1]) == labels


def test_task_ids_with_dots_stay_whole():
    """Task groups give task ids like on_cpu.finetune: as a tag they survive, in a legacy name they would not."""
    _, exporter = mapped_names(["airflow.ti.finish,dag_id=helical_finetune,task_id=on_cpu.finetune,state=success:1|c",
                                "airflow.ti.finish.helical_finetune.on_cpu__finetune.success:1|c"])
    (series,) = exporter.series
    assert dict(series[1]) == {"dag_id": "helical_finetune", "task_id": "on_cpu.finetune", "state": "success"}
