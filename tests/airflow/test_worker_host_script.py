"""`make worker-host` (scripts/worker-host.sh) refuses to start anything on an .env that can't work, or while
the central host doesn't answer, with one line naming the variable or the port and the service behind it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again once the socket is


def worker_env(tmp_path: Path, **values: str) -> Path:
    text = (REPO / ".env-template").read_text()
    values = {"HELICAL_DATA_DIR": str(tmp_path / "data"), "HELICAL_CENTRAL_HOST": "127.0.0.1",
              "HELICAL_WORKER_NAME": "gpu-a100-1", "HELICAL_WORKER_BIND_ADDRESS": "127.0.0.1",
              "POSTGRES_PASSWORD": "pw", "REDIS_PASSWORD": "pw", "AIRFLOW_JWT_SECRET": "jwt",
              "HELICAL_S3_ACCESS_KEY": "key", "HELICAL_RUNNER_S3_ACCESS_KEY": "runner-key", **values}
    for name, value in values.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
    path = tmp_path / "worker.env"
    path.write_text(text)
    return path


def up(env_file: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELICAL_WORKER_ENV": str(env_file), "DOCKER_HOST": "unix:///nonexistent.sock"}
    return subprocess.run(["bash", "scripts/worker-host.sh", "up"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def test_no_env_file_says_what_to_copy(tmp_path):
    assert last_line(up(tmp_path / "missing.env")) == (
        f"error: no {tmp_path / 'missing.env'}: copy the central host's .env here and set the worker host's "
        "variables (README \"Worker hosts\")")


def test_a_missing_worker_variable_is_named(tmp_path):
    line = last_line(up(worker_env(tmp_path, HELICAL_CENTRAL_HOST="")))
    assert line.startswith("error: ") and "sets no HELICAL_CENTRAL_HOST" in line and "worker hosts" in line, line


def test_a_relative_data_folder_is_refused(tmp_path):
    assert "must be an absolute path" in last_line(up(worker_env(tmp_path, HELICAL_DATA_DIR="data")))


def test_a_central_host_that_does_not_answer_is_named_with_the_port_and_service(tmp_path):
    port = closed_port()
    line = last_line(up(worker_env(tmp_path, REDIS_PORT=str(port))))
    assert line == (f"error: the central host 127.0.0.1 does not answer on port {port} (Redis, the Celery broker): "
                    "is its stack up with HELICAL_WORKER_HOSTS naming this host (docker-compose-central.yaml), and "
                    "does its firewall let this host in?")


@pytest.fixture
def mlflow_for_localhost_only(tmp_path):
    """A real `mlflow server` (.venv-mlflow) whose --allowed-hosts lists only localhost, as a central .env that
    was never told about its worker hosts."""
    port = closed_port()
    server = subprocess.Popen([str(REPO / ".venv-mlflow" / "bin" / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'mlflow.db'}", "--allowed-hosts", "localhost,localhost:*"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_an_mlflow_that_refuses_the_central_address_is_named_with_the_fix(tmp_path, mlflow_for_localhost_only):
    port = str(mlflow_for_localhost_only)  # every central port answers here: only MLflow's Host check is left
    line = last_line(up(worker_env(tmp_path, REDIS_PORT=port, POSTGRES_PORT=port, AIRFLOW_API_PORT=port,
                                   MINIO_API_PORT=port, PUSHGATEWAY_PORT=port, MLFLOW_PORT=port)))
    assert line == (f"error: MLflow at http://127.0.0.1:{port} refuses requests addressed to 127.0.0.1:{port} (403: "
                    f"not one of its allowed hosts): add 127.0.0.1:{port} to MLFLOW_ALLOWED_HOSTS in the central "
                    "host's .env, then restart its mlflow service")
