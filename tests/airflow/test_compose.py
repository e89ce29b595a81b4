"""The compose files: valid compose-spec, every variable in .env-template, and the promised structure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

COMPOSE_FILES = sorted(REPO.glob("docker-compose-*.yaml"))
OURS = ["docker-compose-airflow.yaml", "docker-compose-storage.yaml"]
# ${VAR}, ${VAR:-default}, ${VAR:?error}, $VAR; $$ escapes a literal dollar for the container's shell
VARIABLE = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")


def template_variables() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env-template").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_our_compose_files_exist():
    assert {p.name for p in COMPOSE_FILES} >= set(OURS)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path):
    result = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
                             "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_variables_are_in_env_template(path):
    used = {a or b for a, b in VARIABLE.findall(path.read_text())}
    missing = used - set(template_variables())
    assert not missing, f"{path.name} uses variables missing from .env-template: {sorted(missing)}"


def test_env_template_documents_every_variable_and_hides_secrets():
    lines = (REPO / ".env-template").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert i > 0 and (lines[i - 1].startswith("#") or not lines[i - 1].strip() or "=" in lines[i - 1]), line
    values = template_variables()
    for name, value in values.items():
        if re.search(r"PASSWORD|SECRET|FERNET", name):
            assert value.startswith("<") and value.endswith(">"), f"{name} must be a placeholder"
    assert values["HELICAL_DATA_DIR"].startswith("<")  # an absolute host path nobody can guess


def test_only_the_socket_proxy_sees_docker_sock():
    for name in [p.name for p in COMPOSE_FILES]:
        for service, spec in (load(name).get("services") or {}).items():
            mounts = " ".join(str(v) for v in spec.get("volumes") or [])
            if service == "docker-socket-proxy":
                assert "/var/run/docker.sock" in mounts and "haproxy.cfg" in mounts
            elif service == "docker-api-filter":  # the proxy's create filter, behind it on the same host
                assert "/var/run/docker.sock" in mounts and "create_filter.py" in mounts
                assert spec["cap_drop"] == ["ALL"] and spec["read_only"] is True
            elif name in OURS:
                assert "docker.sock" not in mounts, f"{service} in {name} mounts the Docker socket"


def test_runners_network_holds_only_what_runners_need():
    """Runner containers join HELICAL_RUNNER_NETWORK; of the stack's services only MinIO and the Pushgateway
    are on it, never the socket proxy, redis, Postgres, the Airflow API or the StatsD exporter (issue 20)."""
    on_runners = set()
    for name in [p.name for p in COMPOSE_FILES]:
        compose = load(name)
        if compose.get("networks", {}).get("runners"):
            assert compose["networks"]["runners"]["name"] == "${HELICAL_RUNNER_NETWORK:-helical-runners}", name
        for service, spec in (compose.get("services") or {}).items():
            if "runners" in (spec.get("networks") or []):
                on_runners.add(service)
    assert on_runners == {"minio", "pushgateway"}
    worker = load("docker-compose-airflow.yaml")["services"]["airflow-worker"]["environment"]
    proxy_filter = load("docker-compose-airflow.yaml")["services"]["docker-api-filter"]["environment"]
    assert worker["HELICAL_RUNNER_NETWORK"] == proxy_filter["HELICAL_RUNNER_NETWORK"] == \
        "${HELICAL_RUNNER_NETWORK:-helical-runners}"
    assert worker["HELICAL_DATA_DIR"].split(":")[0] == proxy_filter["HELICAL_DATA_DIR"].split(":")[0]
    from helical_lib.settings import DEFAULT_RUNNER_NETWORK

    assert DEFAULT_RUNNER_NETWORK == "helical-runners"  # the DAGs' default is the compose files' default


def test_published_ports_stay_local_unless_env_says_otherwise():
    for name in [p.name for p in COMPOSE_FILES]:
        for service, spec in (load(name).get("services") or {}).items():
            for port in spec.get("ports") or []:
                assert str(port).startswith("${HELICAL_BIND_ADDRESS:-127.0.0.1}:"), f"{service} publishes {port}"
    assert template_variables()["HELICAL_BIND_ADDRESS"] == "127.0.0.1"


def test_prometheus_has_no_anonymous_lifecycle_api():
    command = load("docker-compose-monitoring.yaml")["services"]["prometheus"]["command"]
    assert not any("enable-lifecycle" in part for part in command)


def test_redis_requires_the_password_the_broker_url_carries():
    services = load("docker-compose-airflow.yaml")["services"]
    redis = services["redis"]
    assert redis["command"][:2] == ["redis-server", "--requirepass"] and "REDIS_PASSWORD" in redis["command"][2]
    assert "PONG" in " ".join(redis["healthcheck"]["test"])  # redis-cli exits 0 on NOAUTH too
    broker = services["airflow-worker"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://:${REDIS_PASSWORD:?") and broker.endswith("@redis:6379/0")
    assert template_variables()["REDIS_PASSWORD"].startswith("<")


def test_airflow_services_follow_the_official_conventions():
    compose = load("docker-compose-airflow.yaml")
    services = compose["services"]
    assert {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "airflow-worker-gpu", "airflow-init",
            "docker-socket-proxy"} <= set(services)
    for name, spec in services.items():
        if name != "airflow-init":
            assert "healthcheck" in spec, f"{name} has no healthcheck"
        if name.startswith("airflow-") and name != "airflow-init":
            assert spec["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
            assert spec["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["airflow-worker-gpu"]["profiles"] == ["gpu"]
    assert "--queues gpu" in services["airflow-worker-gpu"]["command"]
    assert "--queues cpu" in services["airflow-worker"]["command"]
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["DOCKER_HOST"] == "tcp://docker-socket-proxy:2375"
    assert env["AIRFLOW_CONN_HELICAL_S3"].startswith("{") and "HELICAL_S3_SECRET_KEY" in env["AIRFLOW_CONN_HELICAL_S3"]
    assert "docker-socket-proxy" in services["airflow-worker"]["depends_on"]


def test_dag_settings_reach_the_workers():
    """Every environment variable the DAG library reads is set for the workers by the compose file."""
    read = set(re.findall(r'env\.get\("([A-Z0-9_]+)"', (REPO / "dags/helical_lib/settings.py").read_text()))
    optional = {"HELICAL_S3_CONN_ID", "HELICAL_RUNNER_S3_CONN_ID", "HELICAL_RUNNER_S3_ENDPOINT", "HELICAL_RUNNER_EXTRA_HOSTS", "HELICAL_RUNNER_MODE",
                "HELICAL_RUNNER_BIN", "HELICAL_RUNNER_PROFILES"}
    env = load("docker-compose-airflow.yaml")["services"]["airflow-worker"]["environment"]
    assert read - optional <= set(env), sorted(read - optional - set(env))


def test_storage_creates_the_bucket_layout():
    services = load("docker-compose-storage.yaml")["services"]
    script = services["minio-init"]["command"][0]
    for prefix in ("incoming", "chunks", "runs", "quarantine"):
        assert prefix in script
    assert services["minio-init"]["depends_on"]["minio"] == {"condition": "service_healthy"}
    assert "healthcheck" in services["minio"]


def test_files_share_one_network():
    for name in [p.name for p in COMPOSE_FILES]:
        networks = load(name).get("networks") or {}
        if networks:
            assert networks.get("helical", {}).get("name") == "${HELICAL_NETWORK:-helical}", name


def test_worker_hints_name_real_services_and_a_stuck_task_fails():
    """check_input's "start a worker" commands name services of the compose file that consume that queue
    (gpu behind its compose profile), and every Airflow service fails a task stuck in a queue."""
    from helical_lib.workers import START_WORKER

    services = load("docker-compose-airflow.yaml")["services"]
    for queue, command in START_WORKER.items():
        service = command.split(" up -d ")[1].split()[0]
        assert f"--queues {queue}" in services[service]["command"], (queue, service)
        for profile in services[service].get("profiles", []):
            assert f"--profile {profile}" in command
    for name in ("airflow-scheduler", "airflow-worker", "airflow-worker-gpu"):
        timeout = services[name]["environment"]["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"]
        assert timeout == "${AIRFLOW_TASK_QUEUED_TIMEOUT:-3600}", name
