"""A real MLflow tracking server for the tests (`mlflow server` from .venv-mlflow, built by
scripts/lib.sh ensure_mlflow_env), as the stack runs it: its own backend store (SQLite here, or a
Postgres URL), artifacts in S3 (moto's server standing in for MinIO) under `<bucket>/mlflow`, served
through the tracking server (`--serve-artifacts`), so clients need only its URL.

Used by the runner, browser and Airflow tests; the server's argv and environment are scripts/local_stack.py's
(make demo and the end-to-end stack run it the same way)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from local_stack import MLFLOW_BIN, mlflow_healthy, mlflow_server_argv, mlflow_server_env  # noqa: E402


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    """`mlflow server` on host:port; stop() and start() again keep its runs (they are in the backend store
    and S3), which is what an outage test needs."""

    work: Path
    s3_url: str
    bucket: str = "helical"
    host: str = "127.0.0.1"
    backend_uri: str = ""  # default: SQLite in work/
    aws_key: str = "testing"
    aws_secret: str = "testing"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120) -> "MlflowServer":
        if not MLFLOW_BIN.exists():
            raise RuntimeError(f"{MLFLOW_BIN} is missing: run `bash -c 'source scripts/lib.sh && "
                               "ensure_mlflow_env'` (the test scripts do)")
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port(self.host)
        backend = self.backend_uri or f"sqlite:///{self.work / 'mlflow.db'}"
        log = open(self.work / "mlflow-server.log", "ab")
        self.process = subprocess.Popen(
            mlflow_server_argv(self.host, self.port, backend, f"s3://{self.bucket}/mlflow"), stdout=log,
            stderr=subprocess.STDOUT, env=mlflow_server_env(self.s3_url, self.aws_key, self.aws_secret), cwd=self.work,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: "
                                   f"{(self.work / 'mlflow-server.log').read_text()[-2000:]}")
            if self.healthy():
                return self
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server at {self.uri} not healthy after {timeout:.0f} s")

    def healthy(self) -> bool:
        return mlflow_healthy(self.uri)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def api(self, endpoint: str, **params) -> dict:
        """GET /api/2.0/mlflow/<endpoint> with query parameters: the REST API, as a user's script calls it."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow/{endpoint}{'?' + query if query else ''}",
                                    timeout=30) as response:
            return json.loads(response.read())

    def post(self, endpoint: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

