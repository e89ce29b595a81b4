"""promtool on the project's own files: the scrape config, the rule files, and the rule unit tests (every
alert silent just before its `for` elapses and firing just after, monitoring/prometheus/tests/)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import PROM_DIR, REPO

RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml")) + sorted((PROM_DIR / "alerts").glob("*.yml"))
TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def alerts() -> list[dict]:
    return [rule for path in sorted((PROM_DIR / "alerts").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_check_config(tmp_path):
    """The config as compose mounts it (/etc/prometheus -> monitoring/prometheus), rule globs included."""
    text = (PROM_DIR / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{PROM_DIR}/")
    (tmp_path / "prometheus.yml").write_text(text)
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def test_check_rules():
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests():
    result = promtool("test", "rules", *[p.name for p in TEST_FILES], cwd=PROM_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_are_named_level_metric_operation():
    for path in sorted((PROM_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_has_runbook_threshold_and_edge_tests(alert):
    annotations = alert["annotations"]
    anchor = annotations["runbook_url"].split("#", 1)[1]
    docs = (REPO / "docs" / "monitoring.md").read_text()
    assert re.search(rf"^#+ .*{re.escape(alert['alert'])}", docs, re.M | re.I), f"no runbook section for {anchor}"
    assert anchor == alert["alert"].lower()
    # the description quotes the threshold the expression compares against, and the `for`
    # (a comparison closed by a parenthesis is a filter inside an aggregation, not the threshold)
    thresholds = re.findall(r"(?:[<>]=?|==)\s*([0-9.]+)(?![\d.]|\s*\))", alert["expr"])
    assert thresholds, alert["expr"]
    for value in thresholds:
        assert f"threshold: " in annotations["description"]
        assert re.search(rf"(?<![\d.]){re.escape(value)}(?![\d.])", annotations["description"]), (value, annotations["description"])
    assert f"for {alert['for']}" in annotations["description"] or alert["for"] in annotations["description"]
    # unit-tested at both edges: an eval_time with no alert, and one with it firing
    cases = [case for path in TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == alert["alert"]]
    assert any(not c["exp_alerts"] for c in cases) and any(c["exp_alerts"] for c in cases)
