"""The provisioned dashboards: valid JSON on the provisioned datasource, every query parsed by a real
Prometheus (the project's config and rules, targets on 127.0.0.1), and data behind the Airflow and Containers
panels.

Grafana itself can't be installed here: its provisioning files are checked for what they declare (uid,
paths), and Grafana's variable formatting is reproduced (multi-value -> regex-escaped, All -> `.*`).
Airflow panels are fed by the statsd_exporter stand-in with packets a real Airflow 3.3.2 sent; Containers
panels by a cAdvisor stand-in serving cAdvisor's documented metric and label names with the labels the DAGs
put on runner containers (checked against dags/helical_lib/runner.py), through the project's scrape config.
"""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from conftest import (CADVISOR_RUNNER_LABELS, DATASOURCE_UID, MON, REPO, grafana_escape, load_dashboards, panels,
                      queries, substitute)

BOARDS = load_dashboards()
ALL_QUERIES = [(name, panel, target) for name, board in BOARDS.items() for panel, target in queries(board)]
# Panels that can only have data on a GPU host (DCGM exporter behind `--profile gpu`).
GPU_ONLY = re.compile(r"\bDCGM_")


def qid(item):
    name, panel, target = item
    return f"{name}:{panel['title']}:{target['refId']}"


def test_three_dashboards_with_unique_uids():
    assert set(BOARDS) == {"airflow", "containers", "runner"}
    assert len({b["uid"] for b in BOARDS.values()}) == 3


def test_provisioning_points_at_the_dashboards_and_the_fixed_uid():
    datasource = yaml.safe_load((MON / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((MON / "grafana/provisioning/dashboards/helical.yml").read_text())["providers"][0]
    compose = yaml.safe_load((REPO / "docker-compose-monitoring.yaml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"]
                  if v.startswith("./"))
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_structure(name):
    board = BOARDS[name]
    names = [v["name"] for v in board["templating"]["list"]]
    # runner and container boards pick the host too (worker hosts: docker-compose-worker.yaml)
    assert names == (["dag", "run"] if name == "airflow" else ["dag", "host", "run"])
    for var in board["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE_UID
        # multi-value: Grafana regex-escapes the values (Airflow run ids hold `+`, `.` and `:`)
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
    ids = [p["id"] for p in board["panels"]] + [p["id"] for r in board["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel.get("description"), f"{panel['title']} has no description"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


@pytest.mark.parametrize("item", ALL_QUERIES, ids=qid)
def test_every_query_parses(prometheus, item):
    """A real Prometheus answers bad_data to a query that doesn't parse."""
    _, _, target = item
    answer = prometheus.query(substitute(target["expr"]))
    assert answer["status"] == "success", answer


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_variable_query_parses(prometheus, name):
    for var in BOARDS[name]["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert match, var["definition"]
        answer = prometheus.api("series", **{"match[]": substitute(match.group(1))})
        assert answer["status"] == "success", answer


def _assert_data(prometheus, name, run=".*"):
    empty = []
    for board_name, panel, target in ALL_QUERIES:
        if board_name != name or GPU_ONLY.search(target["expr"]):
            continue
        expr = substitute(target["expr"], run=run)
        if target.get("instant"):
            result = prometheus.series(expr)
        else:
            result = prometheus.series(expr, range_query=True)
        if not result:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    return empty


def test_airflow_panels_show_data(prometheus, statsd_exporter):
    """Every Airflow panel has data once Prometheus scraped what real Airflow packets became."""
    # the heartbeat rate needs two scrapes of the exporter; recording rules one evaluation
    prometheus.wait_series("airflow_heartbeat_total")
    prometheus.wait_series("dag_id:airflow_ti_failed:ratio30m")
    prometheus.wait_series("sum by (component) (rate(airflow_heartbeat_total[1m]))")
    empty = _assert_data(prometheus, "airflow")
    assert not empty, "Airflow panels without data:\n" + "\n".join(empty)


def dag_container_labels() -> dict[str, str]:
    """The labels dags/helical_lib/runner.py puts on runner containers (key -> value expression)."""
    tree = ast.parse((REPO / "dags/helical_lib/runner.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "labels" and isinstance(value, ast.Dict):
                    # `**{...} if data else {}` spreads (key None) hold optional labels: the fixed ones are enough here
                    return {k.value: ast.unparse(v) for k, v in zip(value.keys, value.values) if k is not None}
    raise AssertionError("no labels={...} in dags/helical_lib/runner.py")


def test_container_panels_use_the_labels_the_dags_set():
    labels = dag_container_labels()
    assert set(CADVISOR_RUNNER_LABELS) <= set(labels), labels
    assert labels["app"] == "'helical-runner'"
    used = set()
    for path in [MON / "grafana/dashboards/containers.json", *sorted((MON / "prometheus").glob("*/*.yml"))]:
        used |= set(re.findall(r"container_label_(\w+)", path.read_text()))
    used.discard("com_docker_compose_service")  # set by compose on every service container
    assert used <= set(labels), f"panels/rules use labels no DAG sets: {used - set(labels)}"


def test_container_panels_use_cadvisor_metric_names():
    """Names documented in cAdvisor's docs/storage/prometheus.md, and kept by the scrape config's filter."""
    documented = {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                  "container_spec_memory_limit_bytes", "container_last_seen", "container_memory_rss"}
    text = (MON / "grafana/dashboards/containers.json").read_text()
    used = set(re.findall(r"\bcontainer_[a-z_]+\b", text)) - {f"container_label_{k}" for k in dag_container_labels()}
    used = {u for u in used if not u.startswith("container_label_")}
    assert used <= documented, used - documented


def test_container_panels_show_data_for_a_run(prometheus):
    """Through the project's scrape config (its metric filter included) every Containers panel has data for
    one run picked in the run variable (values regex-escaped as Grafana does)."""
    prometheus.wait_series("runner_container:container_memory_working_set_bytes:ratio_limit")
    prometheus.wait_series("rate(container_cpu_usage_seconds_total[1m]) > 0")
    prometheus.wait_series("rate(node_cpu_seconds_total[1m])")
    run = grafana_escape(CADVISOR_RUNNER_LABELS["run_id"])
    empty = _assert_data(prometheus, "containers", run=run)
    assert not empty, "Containers panels without data:\n" + "\n".join(empty)
    # the dropped series really are dropped (few series per container)
    assert not prometheus.series("container_memory_cache")
