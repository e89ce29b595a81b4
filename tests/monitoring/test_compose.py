"""docker-compose-monitoring.yaml, checked statically: images can't be pulled on the test machines, so the
stack isn't started here. The compose spec schema (check-jsonschema's vendored copy, offline), the configs it
mounts, healthchecks, the gpu profile, credentials from .env, and what Debian's docker-compose 1.29 rejects."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import REPO

COMPOSE = REPO / "docker-compose-monitoring.yaml"
SPEC = yaml.safe_load(COMPOSE.read_text())
SERVICES = SPEC["services"]
CHECK_JSONSCHEMA = REPO / ".venv-airflow" / "bin" / "check-jsonschema"


def test_compose_spec_schema():
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema comes with .venv-airflow (requirements/airflow.lock)")
    result = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_and_profiles():
    assert set(SERVICES) == {"prometheus", "statsd-exporter", "pushgateway", "pushgateway-janitor", "cadvisor",
                             "node-exporter", "grafana", "dcgm-exporter", "monitoring-secrets"}
    assert SERVICES["dcgm-exporter"]["profiles"] == ["gpu"]
    assert all("profiles" not in s for name, s in SERVICES.items() if name != "dcgm-exporter")
    for name, service in SERVICES.items():
        if name != "monitoring-secrets":  # a one-shot check: it exits, nothing to probe
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        # runners push to the Pushgateway over their own network, which no other monitoring service joins
        assert service["networks"] == (["helical", "runners"] if name == "pushgateway" else ["helical"]), name
        assert re.search(r":[\w.-]+$", service["image"].split(":-", 1)[-1].rstrip("}")), f"{name}: unpinned image"
    assert SPEC["networks"]["helical"]["name"] == "${HELICAL_NETWORK:-helical}"


def test_configs_are_mounted_from_monitoring():
    sources = {}
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
                sources[source.rstrip("/")] = target
    assert sources["./monitoring/prometheus"] == "/etc/prometheus"
    assert sources["./monitoring/statsd"] == "/etc/statsd"
    assert sources["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert "--statsd.mapping-config=/etc/statsd/mapping.yml" in SERVICES["statsd-exporter"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]
    config = yaml.safe_load((REPO / "monitoring/prometheus/prometheus.yml").read_text())
    assert all(f.startswith("/etc/prometheus/") for f in config["rule_files"])
    # scrape targets are these services on their container ports
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    for job, service in [("airflow", "statsd-exporter"), ("pushgateway", "pushgateway"), ("cadvisor", "cadvisor"),
                         ("node", "node-exporter"), ("dcgm", "dcgm-exporter")]:
        host, port = targets[job].split(":")
        assert host == service and (port in str(SERVICES[service].get("expose", []))
                                    or port in str(SERVICES[service].get("ports", []))), (job, targets[job])
    assert [j for j in config["scrape_configs"] if j["job_name"] == "pushgateway"][0]["honor_labels"] is True


def test_grafana_credentials_come_from_env():
    env = SERVICES["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    for service in SERVICES.values():  # no credential written into the file itself
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|KEY", key):
                assert re.fullmatch(r"\$\{\w+(:[?-][^}]*)?\}", str(value)), key


def test_variables_are_listed_in_the_header_and_in_env_template():
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    header = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", "\n".join(l for l in text.splitlines() if l.startswith("#"))))
    assert used <= header, f"not listed in the header comment: {used - header}"
    template = (REPO / ".env-template").read_text()
    missing = sorted(v for v in used if not re.search(rf"^{v}=", template, re.M))
    assert not missing, f".env-template lacks {missing} (owned by the Airflow compose; see docs/monitoring.md)"


def test_nothing_debian_docker_compose_1_29_rejects():
    assert not {"name", "include"} & set(SPEC)
    for name, service in SERVICES.items():
        assert "gpus" not in service, name
        assert "start_interval" not in service.get("healthcheck", {}), name
        for dep in (service.get("depends_on") or {}).values():
            assert "required" not in dep, name


AIRFLOW_STATSD = {  # what monitoring/statsd/mapping.yml needs from every Airflow process (docs/monitoring.md)
    "AIRFLOW__METRICS__STATSD_ON": r"(?i)true",
    "AIRFLOW__METRICS__STATSD_HOST": r"\$\{STATSD_HOST:-statsd-exporter\}|statsd-exporter",
    "AIRFLOW__METRICS__STATSD_PORT": r"\$\{STATSD_PORT:-9125\}|9125",
    "AIRFLOW__METRICS__STATSD_PREFIX": r"airflow",
    "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": r"(?i)true",
}


@pytest.mark.parametrize("component", ["api-server", "scheduler", "dag-processor", "triggerer", "celery worker"])
def test_every_airflow_component_sends_tagged_statsd_to_the_exporter(component):
    """Read-only check of docker-compose-airflow.yaml: task metrics come from the Celery workers, so they need
    the settings as much as the scheduler; without the InfluxDB tags ti.finish etc. arrive without dag_id."""
    airflow = yaml.safe_load((REPO / "docker-compose-airflow.yaml").read_text())
    services = [s for s in airflow["services"].values() if str(s.get("command", "")).startswith(component)]
    assert services, f"no {component} service in docker-compose-airflow.yaml"
    for service in services:
        env = service.get("environment") or {}
        wrong = {k: env.get(k) for k, pattern in AIRFLOW_STATSD.items() if not re.fullmatch(pattern, str(env.get(k)))}
        assert not wrong, f"{component}: StatsD settings missing or different: {wrong}"
