"""The compose files: valid compose-spec, every variable in .env-template, and the promised structure."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

COMPOSE_FILES = sorted(REPO.glob("docker-compose-*.yaml"))
OURS = ["docker-compose-airflow.yaml", "docker-compose-storage.yaml", "docker-compose-worker.yaml",
        "docker-compose-central.yaml"]
WORKER_FILE = "docker-compose-worker.yaml"
CENTRAL_SERVICES = ("postgres", "redis", "minio", "pushgateway", "mlflow", "statsd-exporter", "airflow-apiserver")
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
    """Runner containers join HELICAL_RUNNER_NETWORK; of the stack's services only MinIO, the Pushgateway and
    MLflow are on it, never the socket proxy, redis, Postgres, the Airflow API or the StatsD exporter (issue 20)."""
    on_runners = set()
    for name in [p.name for p in COMPOSE_FILES]:
        compose = load(name)
        if compose.get("networks", {}).get("runners"):
            assert compose["networks"]["runners"]["name"] == "${HELICAL_RUNNER_NETWORK:-helical-runners}", name
        for service, spec in (compose.get("services") or {}).items():
            if "runners" in (spec.get("networks") or []) and name != WORKER_FILE:
                on_runners.add(service)
    assert on_runners == {"minio", "pushgateway", "mlflow"}
    # a worker host's runners reach the central host by address; on their network there is only the
    # placeholder that keeps it in place: not the worker, not the proxies
    worker_host = load(WORKER_FILE)["services"]
    assert [s for s, spec in worker_host.items() if "runners" in (spec.get("networks") or [])] == ["runners-network"]
    holder = worker_host["runners-network"]
    assert holder["networks"] == ["runners"] and holder["user"] == "65534:65534" and holder["read_only"] is True
    assert holder["cap_drop"] == ["ALL"] and not holder.get("volumes") and not holder.get("ports")
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
                # a worker host publishes only what the central Prometheus scrapes, on the address .env names
                bind = "${HELICAL_WORKER_BIND_ADDRESS:?" if name == WORKER_FILE else "${HELICAL_BIND_ADDRESS:-127.0.0.1}:"
                assert str(port).startswith(bind), f"{service} publishes {port}"
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
        if name not in ("airflow-init", "mlflow-init"):  # one-shots: they exit, nothing to probe
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
    # any other queue: a worker host whose worker takes the queues its .env names
    from helical_lib.workers import start_command

    command = start_command("gpu-a100")
    assert command.startswith("HELICAL_WORKER_QUEUES=gpu-a100 ") and f"-f {WORKER_FILE} up -d" in command
    assert "--queues ${HELICAL_WORKER_QUEUES:?" in load(WORKER_FILE)["services"]["airflow-worker"]["command"]
    for name in ("airflow-scheduler", "airflow-worker", "airflow-worker-gpu"):
        timeout = services[name]["environment"]["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"]
        assert timeout == "${AIRFLOW_TASK_QUEUED_TIMEOUT:-3600}", name


# --- MLflow's tracking server (issue 23) ------------------------------------------------------------------

def mlflow_lock_version() -> str:
    pins = dict(line.split("==") for line in (REPO / "requirements/mlflow.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    return pins["mlflow"]


def test_mlflow_image_is_the_locked_version_official_or_built_here():
    version = mlflow_lock_version()
    mlflow = load("docker-compose-airflow.yaml")["services"]["mlflow"]
    # the official image's -full variant: the plain one has neither psycopg2 nor boto3
    assert mlflow["image"] == f"${{MLFLOW_IMAGE:-ghcr.io/mlflow/mlflow:v{version}-full}}"
    assert template_variables()["MLFLOW_IMAGE"] == f"ghcr.io/mlflow/mlflow:v{version}-full"
    listed = subprocess.run(["bash", str(REPO / "scripts/build-local-images.sh"), "--list"], capture_output=True,
                            text=True, check=True, timeout=60).stdout.split("\n")
    assert f"mlflow MLFLOW_IMAGE helical-local/mlflow:{version}" in listed
    dockerfile = (REPO / "docker/local/mlflow.Dockerfile").read_text()
    assert "pip install -q -r /tmp/mlflow.lock" in dockerfile  # exactly the lock, as the tests' venv
    assert re.search(r"^USER (?!0\b|root)\S+", dockerfile, re.M)


def test_mlflow_serves_artifacts_from_its_own_prefix_with_its_own_keys():
    services = load("docker-compose-airflow.yaml")["services"]
    mlflow = services["mlflow"]
    command, env = mlflow["command"], mlflow["environment"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "s3://${HELICAL_BUCKET:-helical}/mlflow"
    assert command[command.index("--port") + 1] == "5000" and command[command.index("--host") + 1] == "0.0.0.0"
    # runs and the registry in Postgres: its own role and database, never Airflow's
    assert env["MLFLOW_BACKEND_STORE_URI"] == \
        "postgresql+psycopg2://mlflow:${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env}@postgres:5432/mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "${HELICAL_S3_ENDPOINT:-http://minio:9000}"
    assert env["AWS_ACCESS_KEY_ID"].startswith("${HELICAL_MLFLOW_S3_ACCESS_KEY:?")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${HELICAL_MLFLOW_S3_SECRET_KEY:?")
    for value in env.values():  # no credential written into the file, none of Airflow's or the runners'
        assert not re.search(r"POSTGRES_PASSWORD|HELICAL_S3_(ACCESS|SECRET)|RUNNER_S3", value), value
    for name in ("MLFLOW_DB_PASSWORD", "HELICAL_MLFLOW_S3_SECRET_KEY", "HELICAL_MLFLOW_S3_ACCESS_KEY"):
        assert template_variables()[name].startswith("<"), name


def test_mlflow_is_healthchecked_published_locally_and_hardened():
    services = load("docker-compose-airflow.yaml")["services"]
    mlflow = services["mlflow"]
    assert "http://127.0.0.1:5000/health" in " ".join(mlflow["healthcheck"]["test"])
    assert mlflow["ports"] == ["${HELICAL_BIND_ADDRESS:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"]
    assert template_variables()["MLFLOW_PORT"] == "5000"
    # runners reach it: whatever they can reach is exposed to untrusted code
    assert mlflow["user"].split(":")[0] not in ("0", "root")
    assert mlflow["read_only"] is True and mlflow["cap_drop"] == ["ALL"]
    assert mlflow["security_opt"] == ["no-new-privileges"]
    assert mlflow["networks"] == ["helical", "runners"] and services["postgres"]["networks"] == ["helical"]
    assert mlflow["depends_on"] == {"mlflow-init": {"condition": "service_completed_successfully"}}
    init = services["mlflow-init"]
    assert init["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert init["image"] == services["postgres"]["image"] and init["user"] not in ("0", "root", "0:0")


def test_mlflow_answers_the_host_names_its_clients_use():
    """mlflow 3.x refuses a request whose Host header isn't allowed (DNS rebinding), and its default allows
    only localhost and private addresses: the service name that workers and runners use must be listed, and
    the UI URL a person opens too; and the address the port is published on, which worker hosts' runners use
    (HELICAL_BIND_ADDRESS: a central host's LAN address), whatever .env lists."""
    command = load("docker-compose-airflow.yaml")["services"]["mlflow"]["command"]
    allowed = command[command.index("--allowed-hosts") + 1]
    assert allowed == "${MLFLOW_ALLOWED_HOSTS:-%s},${HELICAL_BIND_ADDRESS:-127.0.0.1}:*" % \
        template_variables()["MLFLOW_ALLOWED_HOSTS"]
    patterns = template_variables()["MLFLOW_ALLOWED_HOSTS"].split(",")
    tracking = template_variables()["MLFLOW_TRACKING_URI"].split("//")[1]
    ui = template_variables()["HELICAL_MLFLOW_UI_URL"].split("//")[1]
    for host in (tracking, tracking.split(":")[0], ui):
        assert any(fnmatch.fnmatch(host, pattern) for pattern in patterns), host
    assert ui.endswith(":" + template_variables()["MLFLOW_PORT"])


def test_airflow_and_its_runners_get_the_tracking_uri():
    """Every Airflow service has the tracking server's URL (the DAGs hand it to runner containers) and the UI's;
    the URL names the mlflow service on its container port."""
    services = load("docker-compose-airflow.yaml")["services"]
    mlflow = services["mlflow"]
    for name, spec in services.items():
        if name.startswith("airflow-"):
            env = spec["environment"]
            assert env["MLFLOW_TRACKING_URI"] == "${MLFLOW_TRACKING_URI:-http://mlflow:5000}", name
            assert env["HELICAL_MLFLOW_UI_URL"] == "${HELICAL_MLFLOW_UI_URL:-http://127.0.0.1:5000}", name
    assert template_variables()["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert mlflow["ports"][0].endswith(":5000") and "mlflow" in services


def test_mlflow_init_makes_its_role_and_database_idempotently():
    """Postgres images create databases only on an empty volume: mlflow-init makes role and database on every
    `up`, whatever exists (tests/stack runs it twice against the real server)."""
    init = load("docker-compose-airflow.yaml")["services"]["mlflow-init"]
    script = init["command"][0]
    first = script.strip().splitlines()[0]
    assert first.startswith("sh /opt/helical/check-secrets.sh ")
    assert set(first.split()[2:]) == {"MLFLOW_DB_PASSWORD", "HELICAL_MLFLOW_S3_ACCESS_KEY", "HELICAL_MLFLOW_S3_SECRET_KEY"}
    assert "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') \\gexec" in script
    assert "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \\gexec" in script
    assert "ALTER ROLE mlflow WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password'" in script
    assert "ON_ERROR_STOP=1" in script and "$$MLFLOW_DB_PASSWORD" in script  # a variable, never in the SQL text
    assert init["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_mlflow_s3_policy_reaches_only_its_prefix():
    """MLflow's keys: read, write and delete under mlflow/ and list only there (MinIO checks s3:prefix;
    moto ignores the condition, so this is checked here, on the document)."""
    document = json.loads((REPO / "docker/storage/mlflow-policy.json").read_text())
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            if statement["Action"] == ["s3:ListBucket"]:
                assert resource == "arn:aws:s3:::${HELICAL_BUCKET}"
                assert statement["Condition"] == {"StringLike": {"s3:prefix": ["mlflow/*"]}}
            else:
                assert resource == "arn:aws:s3:::${HELICAL_BUCKET}/mlflow/*"
                assert not any(a.endswith("*") or "Policy" in a or "Acl" in a for a in statement["Action"])
    storage = load("docker-compose-storage.yaml")["services"]
    assert "./docker/storage/mlflow-policy.json:/opt/helical/mlflow-policy.json:ro" in storage["minio-init"]["volumes"]
    assert {"HELICAL_MLFLOW_S3_ACCESS_KEY", "HELICAL_MLFLOW_S3_SECRET_KEY"} <= set(storage["storage-secrets"]["command"])


def test_minio_init_gives_mlflow_its_user_and_policy(tmp_path):
    """minio-init's script under dash with a stand-in `mc`: MLflow's user gets policy helical-mlflow (bucket
    filled in), never readwrite, and a key equal to another user's is refused."""
    script = load("docker-compose-storage.yaml")["services"]["minio-init"]["command"][0].replace("$$", "$")
    # /tmp/ first: the clone itself may live under /tmp
    script = script.replace("/tmp/", f"{tmp_path}/").replace("/opt/helical/", str(REPO / "docker/storage") + "/")
    stand_in = 'mc() { echo "mc $*" >> "$MC_LOG"; }\n'
    env = {"PATH": "/usr/bin:/bin", "MC_LOG": str(tmp_path / "mc.log"), "MINIO_ROOT_USER": "root",
           "MINIO_ROOT_PASSWORD": "root-password", "HELICAL_S3_ACCESS_KEY": "airflow-key",
           "HELICAL_S3_SECRET_KEY": "airflow-secret", "HELICAL_RUNNER_S3_ACCESS_KEY": "runner-key",
           "HELICAL_RUNNER_S3_SECRET_KEY": "runner-secret", "HELICAL_MLFLOW_S3_ACCESS_KEY": "mlflow-key",
           "HELICAL_MLFLOW_S3_SECRET_KEY": "mlflow-secret", "HELICAL_BUCKET": "lab-bucket"}
    done = subprocess.run(["dash", "-ec", stand_in + script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert "mc admin user add local mlflow-key mlflow-secret" in calls
    assert f"mc admin policy create local helical-mlflow {tmp_path}/mlflow-policy.json" in calls
    assert "mc admin policy attach local helical-mlflow --user mlflow-key" in calls
    assert not any("mlflow-key" in call and "helical-mlflow" not in call and "user add" not in call for call in calls)
    rendered = (tmp_path / "mlflow-policy.json").read_text()
    assert rendered == (REPO / "docker/storage/mlflow-policy.json").read_text().replace("${HELICAL_BUCKET}", "lab-bucket")
    for other in ("airflow-key", "runner-key", "root"):
        refused = subprocess.run(["dash", "-ec", stand_in + script], env={**env, "HELICAL_MLFLOW_S3_ACCESS_KEY": other},
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "HELICAL_MLFLOW_S3_ACCESS_KEY must differ" in refused.stderr, other


# --- worker hosts (issue 24) --------------------------------------------------------------------------

def test_a_worker_host_joins_the_central_stack_by_address_only():
    """Every central service a worker host reaches is named by HELICAL_CENTRAL_HOST, never by a compose
    service name (those resolve only on the central host's network)."""
    env = load(WORKER_FILE)["services"]["airflow-worker"]["environment"]
    reaching = {k: v for k, v in env.items() if re.search(r"://|_HOST$|_CONN$|BROKER_URL|RESULT_BACKEND|API_SERVER_URL", k)
                or "://" in str(v)}
    assert set(reaching) >= {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                             "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                             "AIRFLOW__METRICS__STATSD_HOST", "AIRFLOW_CONN_HELICAL_S3", "AIRFLOW_CONN_HELICAL_S3_RUNNER",
                             "PUSHGATEWAY_URL", "MLFLOW_TRACKING_URI"}
    for key, value in reaching.items():
        if key in ("DOCKER_HOST", "HELICAL_MLFLOW_UI_URL", "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"):
            # its own proxy; the URL a person opens; a folder in the bucket (through the connection)
            continue
        assert "${HELICAL_CENTRAL_HOST:?" in value, (key, value)
        hosts = re.findall(r"(?:://|@)([A-Za-z0-9_.-]+)[:/]", value.replace("${HELICAL_CENTRAL_HOST", "CENTRAL"))
        assert not set(hosts) & set(CENTRAL_SERVICES), (key, value)
    assert env["DOCKER_HOST"] == "tcp://docker-socket-proxy:2375"  # this host's engine, through its own proxy


def test_a_worker_host_has_the_central_workers_settings():
    """The worker host's Celery worker gets every setting the central worker has, but the scheduler's and the
    UI's own; a setting added centrally later fails here until the worker host gets it too."""
    central = load("docker-compose-airflow.yaml")["services"]["airflow-worker"]["environment"]
    worker = load(WORKER_FILE)["services"]["airflow-worker"]["environment"]
    ui_and_scheduler_only = {"AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
                             "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
                             "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT",
                             "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"}
    assert set(central) - set(worker) == ui_and_scheduler_only
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                "HELICAL_RUNNER_USER", "HELICAL_RUNNER_NETWORK", "HELICAL_BUCKET", "HELICAL_PROFILES",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE"):
        assert worker[key] == central[key], key  # the same secrets and names, from the same .env
    command = load(WORKER_FILE)["services"]["airflow-worker"]["command"]
    assert "--queues ${HELICAL_WORKER_QUEUES:?" in command  # profiles name queues; a host class serves its own


def test_task_logs_of_every_host_go_to_the_same_s3_folder():
    """A worker host's task logs must reach the Airflow UI, whose API server can't reach that host's log
    server: both sides log remotely to the same S3 folder through the same connection."""
    central = load("docker-compose-central.yaml")["services"]
    worker = load(WORKER_FILE)["services"]["airflow-worker"]["environment"]
    remote = {k: v for k, v in worker.items() if k.startswith("AIRFLOW__LOGGING__REMOTE")}
    assert remote["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true"
    assert remote["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"].startswith("s3://${HELICAL_BUCKET:-helical}/")
    airflow_services = [s for s in load("docker-compose-airflow.yaml")["services"] if s.startswith("airflow-")
                        and s != "airflow-init"]
    for service in airflow_services:
        assert central[service]["environment"] == remote, service
    assert "helical_s3" == remote["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] and "AIRFLOW_CONN_HELICAL_S3" in worker


def test_central_file_publishes_what_worker_hosts_reach_and_feeds_prometheus_their_targets():
    central = load("docker-compose-central.yaml")
    published = {s: spec["ports"] for s, spec in central["services"].items() if spec.get("ports")}
    assert set(published) == {"postgres", "redis", "statsd-exporter"}
    targets = central["services"]["worker-targets"]
    assert targets["environment"]["HELICAL_WORKER_HOSTS"] == "${HELICAL_WORKER_HOSTS:-}"
    assert targets["cap_drop"] == ["ALL"] and targets["read_only"] is True
    assert "prometheus-targets:/etc/prometheus-targets:ro" in central["services"]["prometheus"]["volumes"]
    config = yaml.safe_load((REPO / "monitoring/prometheus/prometheus.yml").read_text())
    files = {j["job_name"]: [f for sd in j.get("file_sd_configs", []) for f in sd["files"]] for j in config["scrape_configs"]}
    assert files["cadvisor"] == ["/etc/prometheus-targets/workers-cadvisor.json"]
    assert files["node"] == ["/etc/prometheus-targets/workers-node.json"]


def test_worker_and_central_files_compose_with_a_worker_hosts_env(tmp_path):
    """docker-compose itself accepts both files with the variables .env-template documents, and refuses a
    worker host's file without its central host, in one line naming the variable."""
    env = (REPO / ".env-template").read_text()
    env = re.sub(r"^HELICAL_DATA_DIR=.*$", "HELICAL_DATA_DIR=/srv/helical", env, flags=re.M)
    complete = env.replace("HELICAL_CENTRAL_HOST=\n", "HELICAL_CENTRAL_HOST=10.0.0.1\n").replace(
        "HELICAL_WORKER_NAME=\n", "HELICAL_WORKER_NAME=gpu-a100-1\n").replace(
        "HELICAL_WORKER_BIND_ADDRESS=\n", "HELICAL_WORKER_BIND_ADDRESS=10.0.0.12\n")
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (scripts/stack.sh installs Debian's)")

    def config(text: str, *files: str) -> subprocess.CompletedProcess:
        (tmp_path / ".env").write_text(text)
        return subprocess.run([compose, "--env-file", str(tmp_path / ".env"), "--project-directory", str(REPO),
                               *[a for f in files for a in ("-f", str(REPO / f))], "config", "--quiet"],
                              capture_output=True, text=True, timeout=120)

    ok = config(complete, WORKER_FILE)
    assert ok.returncode == 0, ok.stderr
    ok = config(complete.replace("HELICAL_WORKER_HOSTS=\n", "HELICAL_WORKER_HOSTS=gpu-a100-1=10.0.0.12\n"),
                "docker-compose-storage.yaml", "docker-compose-monitoring.yaml", "docker-compose-airflow.yaml",
                "docker-compose-central.yaml")
    assert ok.returncode == 0, ok.stderr
    refused = config(complete.replace("HELICAL_CENTRAL_HOST=10.0.0.1\n", "HELICAL_CENTRAL_HOST=\n"), WORKER_FILE)
    assert refused.returncode != 0 and "set HELICAL_CENTRAL_HOST in .env" in refused.stderr, refused.stderr


def test_a_worker_hosts_socket_proxy_and_filter_are_the_central_ones_but_for_the_engines_socket():
    """docker-compose 1.29 can't `extends` a service with depends_on, so the worker host repeats the proxy and
    its create filter: they must stay the central ones (allow-list, body filter, hardening), only the socket
    of this host's engine may differ."""
    central = load("docker-compose-airflow.yaml")["services"]
    worker = load(WORKER_FILE)["services"]
    for service in ("docker-socket-proxy", "docker-api-filter"):
        theirs, ours = dict(central[service]), dict(worker[service])
        sockets = [v.replace("${HELICAL_DOCKER_SOCKET:-/var/run/docker.sock}", "/var/run/docker.sock")
                   for v in ours.pop("volumes")]
        assert sockets == theirs.pop("volumes") and ours == theirs, service
