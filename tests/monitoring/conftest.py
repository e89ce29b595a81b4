"""Fixtures for the monitoring tests: the project's Prometheus config run by a real Prometheus (Debian's
`prometheus`) against real local targets — a Pushgateway (Debian's), node-exporter (Debian's), and
stand-ins for the exporters no reachable registry ships (statsd_exporter: monitoring/statsd/statsd_exporter.py;
cAdvisor: a fixed exposition in cAdvisor's documented format) — plus helpers to evaluate dashboard queries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

# helical reads its cache location at import: the runner processes these tests start get a private one.
_CACHE_PREFIX = Path(tempfile.mkdtemp(prefix="helical-monitoring-cache-"))
os.environ["CACHE_DIR_HELICAL_PREFIX"] = str(_CACHE_PREFIX)
os.environ.pop("PUSHGATEWAY_URL", None)

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "monitoring"
sys.path.insert(0, str(MON / "statsd"))  # statsd_exporter.py, the exporter stand-in
PROM_DIR = MON / "prometheus"
DASHBOARDS = MON / "grafana" / "dashboards"
MAPPING = MON / "statsd" / "mapping.yml"
PACKETS = Path(__file__).parent / "data" / "airflow-3.3.2-statsd-packets.txt"
DATASOURCE_UID = "helical-prometheus"
MODEL = "gf-12L-38M-i4096"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")


def http_get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _up(url: str) -> bool:
    try:
        http_get(url, timeout=1)
        return True
    except OSError:
        return False


def start(cmd: list[str], health: str, log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _up(health), timeout=30, what=f"{cmd[0]} ready")
    except AssertionError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise AssertionError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- dashboards -------------------------------------------------------------------------------------

def load_dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("type") != "row"]


def queries(board: dict) -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in panels(board) for target in panel.get("targets", [])]


def grafana_escape(value: str) -> str:
    """How Grafana formats a multi-value variable's value for a Prometheus query (prometheusSpecialRegexEscape
    in Grafana's Prometheus datasource): regex metacharacters get two backslashes, as a PromQL string needs."""
    value = value.replace("\\", "\\" * 4)
    return re.sub(r"([$^*{}\[\]'+?.()|])", lambda m: "\\\\" + m.group(1), value)


def substitute(expr: str, dag: str = ".*", run: str = ".*", range_: str = "1h", host: str = ".*") -> str:
    """Grafana's variables as Grafana would fill them (All -> .*; one value -> regex-escaped)."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", range_).replace("$__interval", "15s")
            .replace("$dag", dag).replace("$run", run).replace("$host", host))


# --- Prometheus ---------------------------------------------------------------------------------------

class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=20)
        except urllib.error.HTTPError as exc:  # 400 bad_data etc. carry a JSON body
            body = exc.read()
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def query_range(self, expr: str, seconds: float = 300, step: str = "1s") -> dict:
        now = time.time()
        return self.api("query_range", query=expr, start=f"{now - seconds:.3f}", end=f"{now:.3f}", step=step)

    def series(self, expr: str, range_query: bool = False) -> list[dict]:
        answer = self.query_range(expr) if range_query else self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def wait_series(self, expr: str, timeout: float = 30) -> list[dict]:
        return wait_for(lambda: self.series(expr), timeout=timeout, what=f"data for {expr}")


def project_config(targets: dict[str, str], work: Path, interval: str = "1s") -> Path:
    """monitoring/prometheus/prometheus.yml with targets on 127.0.0.1, the repo's rule files and 1s scrapes."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(PROM_DIR / f.replace("/etc/prometheus/", "")) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        labels = job["static_configs"][0].get("labels")
        job["static_configs"] = [{"targets": [targets[job["job_name"]]], **({"labels": labels} if labels else {})}]
        for sd in job.get("file_sd_configs", []):  # worker hosts' target files: in work/prometheus-targets
            sd["files"] = [str(work / "prometheus-targets" / Path(f).name) for f in sd["files"]]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def work_dir():
    path = Path(tempfile.mkdtemp(prefix="helical-monitoring-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pushgateway(work_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Debian's build persists to a machine-wide /var/lib/prometheus/pushgateway.data by default: keep ours private
    proc = start(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
                  f"--persistence.file={work_dir / 'pushgateway.data'}"], f"{url}/-/healthy",
                 work_dir / "pushgateway.log")
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def statsd_exporter():
    """The statsd_exporter stand-in fed with the committed packets a real Airflow 3.3.2 sent."""
    from statsd_exporter import Exporter, Mapping

    exporter = Exporter(Mapping(MAPPING))
    for line in PACKETS.read_text().splitlines():
        if line and not line.startswith("#"):
            exporter.feed(line)
    port = free_port()
    server = exporter.serve(port)
    exporter.url = f"127.0.0.1:{port}"
    yield exporter
    server.shutdown()


CADVISOR_RUNNER_LABELS = {"app": "helical-runner", "dag_id": "helical_finetune", "task_id": "on_cpu.finetune",
                          "run_id": "manual__2026-11-23T10-00-00-00-00", "profile": "cpu-small"}


def cadvisor_exposition(cpu_seconds: float) -> str:
    """What cAdvisor serves for one runner container and one compose service: metric and label names from
    cAdvisor's docs/storage/prometheus.md (container_label_<Docker label>, with non-alphanumerics as `_`)."""
    runner = {"id": "/system.slice/docker-abc.scope", "name": "helical-finetune-manual-t1-a1b2c3",
              "image": "helical-runner:cpu", **{f"container_label_{k}": v for k, v in CADVISOR_RUNNER_LABELS.items()}}
    service = {"id": "/system.slice/docker-def.scope", "name": "helical-airflow-worker-cpu-1",
               "image": "helical-airflow:3.3.2", "container_label_com_docker_compose_service": "airflow-worker-cpu",
               "container_label_com_docker_compose_project": "helical-airflow"}

    def line(name, labels, value):
        body = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{body}}} {value}"

    out = []
    for labels, memory, limit in ((runner, 6.5e9, 8589934592), (service, 1.2e9, 0)):
        out += [line("container_cpu_usage_seconds_total", {**labels, "cpu": "total"}, cpu_seconds),
                line("container_memory_working_set_bytes", labels, memory),
                line("container_memory_rss", labels, memory * 0.9),
                line("container_spec_memory_limit_bytes", labels, limit),
                line("container_last_seen", labels, time.time()),
                line("container_memory_cache", labels, 1e6)]  # dropped by the scrape config
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def cadvisor():
    """A cAdvisor stand-in (cAdvisor can't be installed here) whose CPU counter grows like a busy container."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = cadvisor_exposition(1.5 * (time.time() - started)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{port}"
    server.shutdown()


def start_node_exporter(log: Path) -> tuple[subprocess.Popen, str]:
    """Debian's node-exporter on a free 127.0.0.1 port: (process, host:port)."""
    port = free_port()
    proc = start(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}"],
                 f"http://127.0.0.1:{port}/metrics", log)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def node_exporter(work_dir):
    proc, address = start_node_exporter(work_dir / "node-exporter.log")
    yield address
    stop(proc)


@pytest.fixture(scope="session")
def prometheus(work_dir, pushgateway, statsd_exporter, cadvisor, node_exporter):
    """Real Prometheus running the project's prometheus.yml and rules, every target on 127.0.0.1."""
    port = free_port()
    targets = {"prometheus": f"127.0.0.1:{port}", "airflow": statsd_exporter.url,
               "pushgateway": pushgateway.removeprefix("http://"), "cadvisor": cadvisor,
               "node": node_exporter, "dcgm": f"127.0.0.1:{free_port()}"}
    config = project_config(targets, work_dir)
    data = work_dir / "tsdb"
    proc = start(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
                  f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                 f"http://127.0.0.1:{port}/-/ready", work_dir / "prometheus.log")
    prom = Prometheus(f"http://127.0.0.1:{port}")
    # every target but the GPU exporter (not running on CPU hosts) up after the first scrapes
    prom.wait_series('count(up{job!="dcgm"} == 1) == 5', timeout=30)
    yield prom
    stop(proc)
