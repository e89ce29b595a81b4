"""A whole Airflow stack on this machine as venv processes (used by `make demo`, the end-to-end tests and
the Airflow benchmark), from the Airflow venv and Debian packages:
Postgres 15 (private cluster), redis, moto's S3 server, and Airflow's api-server, scheduler, dag-processor,
triggerer and a Celery worker for queue cpu (start_worker adds one for another queue). Every server gets a
free high port and logs to the work dir.

With a Docker engine (runner_mode docker) it also starts the docker-socket-proxy (scripts/socket-proxy.sh)
and puts runner containers on a network of their own (scripts/runner-network.sh), as the compose stack
does: moto's S3 (and the Pushgateway, when asked for) listen on that network's gateway address, everything
else (Postgres, redis, the proxy, the Airflow API) on 127.0.0.1 only, which a container can't reach.
The engine and the runner image come from scripts/ (see scripts/suite-e2e.sh).

With mlflow=True it also runs MLflow's tracking server (`mlflow server` from .venv-mlflow, built by
scripts/lib.sh ensure_mlflow_env) as the compose stack does: backend store in this Postgres (database
`mlflow`), artifacts in s3://helical/mlflow on moto, served through the tracking server, listening where
runners reach it (the gateway address, like S3); Airflow, and through it the runners, get its URL."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MLFLOW_BIN = REPO / ".venv-mlflow" / "bin" / "mlflow"


def mlflow_server_argv(host: str, port: int, backend_uri: str, artifacts: str) -> list[str]:
    """`mlflow server` as make demo and the tests run it: one worker, artifacts (`artifacts`, an s3:// URL)
    served through the tracking server, so its clients need only its URL; any Host header accepted (runners
    call it by the runner network's gateway address)."""
    return [str(MLFLOW_BIN), "server", "--host", host, "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts, "--serve-artifacts",
            "--allowed-hosts", "*"]


def mlflow_healthy(url: str) -> bool:
    """Does the tracking server at url answer its /health?"""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def mlflow_server_env(s3_url: str, key: str, secret: str) -> dict:
    """The server's environment: its S3 endpoint and keys (the server's alone), nothing inherited that
    would point MLflow or boto3 elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "AIRFLOW", "HELICAL_"))}
    return {**env, "MLFLOW_S3_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last reason
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last!r})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class Stack:
    work: Path  # logs, Airflow home, Postgres data (a fresh temp folder)
    data_dir: Path  # the host data folder mounted at /data in runners
    runner_mode: str  # docker | local
    engine_socket: str = ""  # the Docker engine's unix socket (runner_mode docker)
    # the network runner containers join (docker mode); not the compose stack's helical-runners, which
    # docker-compose must create itself on the same engine
    runner_network: str = "helical-local-runners"
    pushgateway: bool = False  # start Debian's prometheus-pushgateway for runner metrics
    race_ingest: bool = False  # add a second ingest DAG on the same prefix (tests: two sensors racing)
    mlflow: bool = False  # start MLflow's tracking server (Postgres database mlflow, artifacts s3://helical/mlflow)
    extra_env: dict = field(default_factory=dict)  # on top of the Airflow processes' environment
    ports: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)
    password: str = field(default_factory=lambda: secrets.token_hex(8))
    redis_password: str = field(default_factory=lambda: secrets.token_hex(16))
    runner_host: str = "127.0.0.1"  # where runners reach S3 and the Pushgateway: the runner network's gateway
    docker_url: str = ""  # the socket proxy, once started
    proxy_pids: list = field(default_factory=list)
    specs: dict = field(default_factory=dict)  # name -> (argv, env) of each spawned server, for restart()
    env: dict = field(default_factory=dict)
    _token: str = ""

    # --- servers ---------------------------------------------------------------------------------------
    def start(self) -> "Stack":
        self.ports = {name: free_port() for name in ("postgres", "redis", "s3", "api", "worker_logs",
                                                     "trigger_logs", "pushgateway", "proxy", "mlflow")}
        if self.runner_mode == "docker":
            if not self.engine_socket:
                raise ValueError("runner_mode docker needs engine_socket, the Docker engine's unix socket")
            self.runner_host = subprocess.run(
                ["bash", str(REPO / "scripts/runner-network.sh"), self.runner_network], check=True, text=True,
                capture_output=True, timeout=60, env={**os.environ, "DOCKER_HOST": f"unix://{self.engine_socket}"},
            ).stdout.split()[-1]
            self._start_proxy()
        self._start_postgres()
        # the broker takes a password (issue 20): anything that reaches it could enqueue work for the worker
        self._spawn("redis", ["redis-server", "--port", str(self.ports["redis"]), "--bind", "127.0.0.1",
                              "--requirepass", self.redis_password, "--save", "", "--appendonly", "no"])
        self._spawn("s3", [str(VENV_BIN / "moto_server"), "-H", self.runner_host, "-p", str(self.ports["s3"])])
        servers = [("127.0.0.1", self.ports["redis"]), (self.runner_host, self.ports["s3"])]
        if self.pushgateway:
            self._spawn("pushgateway", [shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway",
                                        f"--web.listen-address={self.runner_host}:{self.ports['pushgateway']}"])
            servers.append((self.runner_host, self.ports["pushgateway"]))
        wait_for(lambda: all(port_open(port, host) for host, port in servers), 30, "redis, moto and the Pushgateway")
        if self.mlflow:  # starts in tens of seconds: waited for once Airflow is up
            self._start_mlflow()
        self.env = self._airflow_env()
        self._run(["airflow", "db", "migrate"], "db-migrate", timeout=600)
        self._spawn("api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.ports["api"])],
                    self.env)
        self._spawn("scheduler", ["airflow", "scheduler"], self.env)
        self._spawn("dag-processor", ["airflow", "dag-processor"], self.env)
        self._spawn("triggerer", ["airflow", "triggerer"], self.env)
        # 4 task slots, as the compose stack's worker (CELERY_WORKER_CONCURRENCY's default): with 2, a dozen
        # uploads at once queued a good run's steps 30 to 50 s each behind the bad ones' quick failures
        self._spawn("worker", ["airflow", "celery", "worker", "--queues", "cpu", "--concurrency", "4"], self.env)
        wait_for(lambda: self.api("GET", "/api/v2/version").status_code == 200, 180, "the api-server")
        if self.mlflow:
            self._wait_for_mlflow()
        return self

    def start_worker(self, queue: str, concurrency: int = 1, timeout: float = 180) -> str:
        """Start another Celery worker, consuming only `queue` (as docker-compose-airflow.yaml's
        airflow-worker-gpu does for gpu), and return its node name once it answers a ping over the broker."""
        node = f"{queue}@{socket.gethostname()}"
        env = {**self.env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
        self._spawn(f"worker-{queue}", ["airflow", "celery", "worker", "--queues", queue, "--concurrency",
                                        str(concurrency), "--celery-hostname", node], env)
        ping = [str(VENV_BIN / "celery"), "--app", "airflow.providers.celery.executors.celery_executor.app",
                "inspect", "ping", "--timeout", "2", "-d", node]
        wait_for(lambda: subprocess.run(ping, env=self.env, capture_output=True, timeout=60).returncode == 0,
                 timeout, f"the Celery worker for queue {queue}", interval=1)
        return node

    def _start_proxy(self) -> None:
        """The socket proxy and its create filter, allowing exactly this stack's data folder, runner network
        and profiles' images."""
        env = {**os.environ, "HELICAL_DATA_DIR": str(self.data_dir), "HELICAL_RUNNER_NETWORK": self.runner_network,
               "HELICAL_PROFILES": self.extra_env.get("HELICAL_PROFILES", str(REPO / "config/profiles.yaml"))}
        out = subprocess.run(["bash", str(REPO / "scripts/socket-proxy.sh"), "--daemon", str(self.ports["proxy"]),
                              self.engine_socket], check=True, capture_output=True, text=True, timeout=60, env=env)
        self.proxy_pids = [int(pid) for pid in out.stdout.split()]
        self.docker_url = f"tcp://127.0.0.1:{self.ports['proxy']}"

    def _start_mlflow(self) -> None:
        """MLflow's tracking server in its own database of this Postgres, artifacts on this moto."""
        if not MLFLOW_BIN.exists():
            raise RuntimeError(f"{MLFLOW_BIN} is missing: run `bash -c 'source scripts/lib.sh && ensure_mlflow_env'`")
        self._createdb("mlflow")
        backend = f"postgresql+psycopg2://airflow@127.0.0.1:{self.ports['postgres']}/mlflow"
        argv = mlflow_server_argv(self.runner_host, self.ports["mlflow"], backend, "s3://helical/mlflow")
        self._spawn("mlflow", argv, mlflow_server_env(self.s3_url, "e2e-key", "e2e-secret"))

    def _wait_for_mlflow(self) -> None:
        """Until it answers /health; a server that exits (a missing driver, a port taken) is said at once."""
        process = self.procs["mlflow"]
        wait_for(lambda: process.poll() is not None or self.mlflow_healthy(), 180, "MLflow's tracking server")
        if process.poll() is not None:
            log = (self.work / "mlflow.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"mlflow server exited with {process.returncode}: {log}")

    def _createdb(self, name: str) -> None:
        subprocess.run([*self._as_postgres, str(self._pg_bin / "createdb"), "-h", "127.0.0.1", "-p",
                        str(self.ports["postgres"]), "-U", "airflow", name], check=True, capture_output=True,
                       timeout=60)

    def _start_postgres(self) -> None:
        pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        pgdata = self.work / "pgdata"
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        pgdata.mkdir()
        if os.geteuid() == 0:
            shutil.chown(pgdata, "postgres", "postgres")
            os.chmod(self.work, 0o755)
        subprocess.run([*as_postgres, str(pg_bin / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "airflow",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(pgdata), "-w", "-l",
                        str(pgdata / "server.log"), "-o",
                        f"-p {self.ports['postgres']} -k {pgdata} -c listen_addresses=127.0.0.1 -c fsync=off",
                        "start"], check=True, capture_output=True, timeout=120)
        self._pg_stop = [*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "stop"]
        self._pg_bin, self._as_postgres = pg_bin, as_postgres
        self._createdb("airflow")

    def _airflow_env(self) -> dict:
        home = self.work / "airflow"
        home.mkdir()
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({"admin": self.password}))
        db = f"airflow@127.0.0.1:{self.ports['postgres']}/airflow"
        api = f"http://127.0.0.1:{self.ports['api']}"
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HELICAL_", "AWS_", "MLFLOW_"))}
        env.update({
            "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self._dags_folder()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # the DAGs' own flag must unpause them
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{self.redis_password}@127.0.0.1:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{db}",
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "cpu",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports["worker_logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["trigger_logs"]),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # as in docker-compose-airflow.yaml: a task stuck in a queue fails visibly (after two requeues)
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1800",
            # a task whose worker died (no heartbeat) is failed and retried after this long, not Airflow's
            # default 300 s (docker-compose-airflow.yaml's AIRFLOW_TASK_HEARTBEAT_TIMEOUT)
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            # as in docker-compose-airflow.yaml: the DAG library must import in the triggerer too
            "PYTHONPATH": str(REPO / "dags"),
            "AIRFLOW_CONN_HELICAL_S3": json.dumps({
                "conn_type": "aws", "login": "e2e-key", "password": "e2e-secret",
                "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"}}),
            # moto here doesn't enforce IAM: the runners' connection holds the same keys (the policy that limits
            # them is tried against moto with IAM on, tests/airflow/test_runner_s3_policy.py)
            "AIRFLOW_CONN_HELICAL_S3_RUNNER": json.dumps({
                "conn_type": "aws", "login": "e2e-key", "password": "e2e-secret",
                "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"}}),
            "HELICAL_DATA_DIR": str(self.data_dir),
            "HELICAL_RUNNER_NETWORK": self.runner_network,
            **({"PUSHGATEWAY_URL": self.pushgateway_url} if self.pushgateway else {}),
            # runners log to it and register models (helical_lib.settings); the UI is at the same address here
            **({"MLFLOW_TRACKING_URI": self.mlflow_url, "HELICAL_MLFLOW_UI_URL": self.mlflow_url}
               if self.mlflow else {}),
            "HELICAL_RUNNER_MODE": self.runner_mode,
            "HELICAL_RUNNER_BIN": str(REPO / ".venv-runner" / "bin" / "helical-runner"),
            "DOCKER_HOST": self.docker_url,
            **self.extra_env,
        })
        return env

    def _dags_folder(self) -> Path:
        """The repo's dags/, or with race_ingest a private folder of links to it plus helical_ingest_twin.py:
        the ingest DAG's own code under a second dag_id (it is named after its file), watching incoming/ too."""
        if not self.race_ingest:
            return REPO / "dags"
        folder = self.work / "dags"
        folder.mkdir()
        for entry in (REPO / "dags").iterdir():
            if entry.name != "__pycache__":
                (folder / entry.name).symlink_to(entry)
        twin = REPO / "dags" / "helical_ingest.py"
        (folder / "helical_ingest_twin.py").write_text(
            "# airflow DAG: a second ingest sensor racing helical_ingest (end-to-end tests only)\n"
            f"exec(compile(open({str(twin)!r}).read(), __file__, 'exec'))\n")
        return folder

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.specs[name] = (argv, env)
        log = open(self.work / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ,
                                            cwd=self.work, start_new_session=True)

    def _run(self, argv: list[str], name: str, timeout: float) -> None:
        with open(self.work / f"{name}.log", "wb") as log:
            subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, check=True, timeout=timeout)

    # --- faults (tests/e2e/test_faults.py) -------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a server's whole process group (a Celery worker with its pool and task supervisors)."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def restart(self, name: str, sig: int = signal.SIGTERM, down_seconds: float = 0.0) -> None:
        """Stop a server (SIGTERM: a restart; SIGKILL: a crash), wait, start it again as it was started."""
        self.kill(name, sig)
        time.sleep(down_seconds)
        self._spawn(name, *self.specs[name])

    def restart_proxy(self, down_seconds: float = 0.0) -> None:
        """The socket proxy (haproxy and its create filter) stopped and started again on the same port."""
        for pid in self.proxy_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        wait_for(lambda: not port_open(self.ports["proxy"]), 30, "the socket proxy to stop")
        time.sleep(down_seconds)
        self._start_proxy()

    def stop(self) -> None:
        for pid in self.proxy_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if getattr(self, "_pg_stop", None):
            subprocess.run(self._pg_stop, capture_output=True, timeout=60)

    def dead(self) -> dict[str, int]:
        return {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}

    # --- clients ----------------------------------------------------------------------------------------
    @property
    def s3_url(self) -> str:
        return f"http://{self.runner_host}:{self.ports['s3']}"

    @property
    def pushgateway_url(self) -> str:
        return f"http://{self.runner_host}:{self.ports['pushgateway']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.runner_host}:{self.ports['mlflow']}"

    def mlflow_healthy(self) -> bool:
        return mlflow_healthy(self.mlflow_url)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                            aws_access_key_id="e2e-key", aws_secret_access_key="e2e-secret")

    def token(self) -> str:
        import httpx  # the Airflow venv's; wait_for and free_port serve clients without it (tests/stack)

        if not self._token:
            response = httpx.post(f"http://127.0.0.1:{self.ports['api']}/auth/token",
                                  json={"username": "admin", "password": self.password}, timeout=30)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs):
        import httpx

        headers = {"Authorization": f"Bearer {self.token()}"} if path.startswith("/api/v2/") and \
            path != "/api/v2/version" else {}
        return httpx.request(method, f"http://127.0.0.1:{self.ports['api']}{path}", headers=headers,
                             timeout=30, **kwargs)

    def get(self, path: str, **params) -> dict:
        response = self.api("GET", path, params=params)
        response.raise_for_status()
        return response.json()
