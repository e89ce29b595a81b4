"""Capture the StatsD packets a real Airflow 3.3 sends while it runs DAGs.

Starts, from the Airflow virtualenv (.venv-airflow, built from requirements/airflow.lock), an api-server, a
dag-processor and a scheduler with the LocalExecutor on a throwaway sqlite AIRFLOW_HOME, with the StatsD
settings docs/monitoring.md asks of the stack (tags on, InfluxDB style), pointed at a UDP socket of ours.
Two DAGs run once each: one succeeds, one fails (a task in a task group, so its id has a dot).

    python tests/monitoring/airflow_capture.py [OUT]   # refresh tests/monitoring/data/ by hand
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = REPO / ".venv-airflow" / "bin" / "airflow"
DAGS = {
    "mon_probe_ok.py": """
        from airflow.sdk import dag, task

        @dag(schedule=None, catchup=False, is_paused_upon_creation=False)
        def mon_probe_ok():
            @task
            def step() -> int:
                return 1

            step()

        mon_probe_ok()
    """,
    "mon_probe_fail.py": """
        from airflow.sdk import dag, task, TaskGroup

        @dag(schedule=None, catchup=False, is_paused_upon_creation=False)
        def mon_probe_fail():
            @task
            def ok() -> int:
                return 1

            @task
            def boom(x: int) -> None:
                raise RuntimeError("probe failure")

            with TaskGroup("group"):
                boom(ok())

        mon_probe_fail()
    """,
}
HEADER = ("# StatsD packets captured from a real Airflow {version} (api-server, dag-processor, scheduler with the\n"
          "# LocalExecutor; statsd_influxdb_enabled=True, legacy_names_on default True) running one succeeding and\n"
          "# one failing DAG; one packet per distinct name+tags. Refresh: python tests/monitoring/airflow_capture.py\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UdpListener:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.lines.extend(line for line in data.decode(errors="replace").splitlines() if line)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _airflow(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(AIRFLOW_BIN), *args], env=env, capture_output=True, text=True, timeout=timeout)


def capture(timeout: float = 240) -> list[str]:
    """Run the two DAGs on a real Airflow; return every StatsD line it sent."""
    home = Path(tempfile.mkdtemp(prefix="airflow-capture-"))
    (home / "dags").mkdir()
    for name, source in DAGS.items():
        (home / "dags" / name).write_text(textwrap.dedent(source))
    listener = UdpListener()
    api_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__PORT": str(api_port), "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        # periodic gauges every few seconds instead of every 30 (dagruns.running, ti.*) or 5 (pools)
        "AIRFLOW__SCHEDULER__DAGRUN_METRICS_INTERVAL": "2", "AIRFLOW__SCHEDULER__TI_METRICS_INTERVAL": "2",
        "AIRFLOW__SCHEDULER__POOL_METRICS_INTERVAL": "1",
        # what docs/monitoring.md asks of every Airflow container
        "AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(listener.port), "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    })
    procs = []
    try:
        migrated = _airflow(env, "db", "migrate", timeout=180)
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        for args in (["api-server", "--port", str(api_port)], ["dag-processor"], ["scheduler"]):
            log = open(home / f"{args[0]}.log", "wb")
            procs.append(subprocess.Popen([str(AIRFLOW_BIN), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = time.monotonic() + timeout
        pending = {"mon_probe_ok", "mon_probe_fail"}
        while pending and time.monotonic() < deadline:  # DAGs are triggerable once the dag-processor parsed them
            for dag_id in sorted(pending):
                if _airflow(env, "dags", "trigger", dag_id).returncode == 0:
                    pending.discard(dag_id)
            time.sleep(1)
        assert not pending, f"could not trigger {pending}: {(home / 'dag-processor.log').read_text()[-2000:]}"
        wanted = ("airflow.dagrun.duration.success,", "airflow.dagrun.duration.failed,",
                  "airflow.scheduler.dagruns.running:", "airflow.pool.starving_tasks,", "airflow.executor.open_slots,",
                  "airflow.scheduler_heartbeat:", "airflow.dag_processing.import_errors:")
        while time.monotonic() < deadline:
            if all(any(line.startswith(w) for line in listener.lines) for w in wanted):
                time.sleep(3)  # a few more scheduler loops (gauges, heartbeats)
                break
            time.sleep(1)
        else:
            raise AssertionError(f"no DAG run finished in {timeout}s: {(home / 'scheduler.log').read_text()[-3000:]}")
    finally:
        for proc in procs:  # each started in its own session: end it and the workers it forked
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        listener.close()
    return list(listener.lines)


def distinct(lines: list[str]) -> list[str]:
    """One line per distinct name+tags and type (values vary)."""
    seen = {}
    for line in lines:
        if ":" not in line:
            continue
        name, rest = line.split(":", 1)
        seen.setdefault((name, rest.split("|")[1] if "|" in rest else ""), line)
    return [seen[key] for key in sorted(seen)]


def airflow_version() -> str:
    out = subprocess.run([str(REPO / ".venv-airflow/bin/python"), "-c", "import airflow; print(airflow.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "airflow-3.3.2-statsd-packets.txt"
    lines = distinct(capture())
    out.write_text(HEADER.format(version=airflow_version()) + "\n".join(lines) + "\n")
    print(f"{len(lines)} distinct packets -> {out}")
