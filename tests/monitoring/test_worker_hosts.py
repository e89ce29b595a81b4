"""Worker hosts in Prometheus: HELICAL_WORKER_HOSTS in .env becomes file_sd target files
(monitoring/worker-hosts/worker_targets.py, the script docker-compose-central.yaml runs), and the project's
prometheus.yml scrapes each host's node-exporter and cAdvisor labelled host=<name>, beside the central host's
(host="central"). A host added later is scraped without a restart or a hand edit of prometheus.yml.

Each worker host here is a real node-exporter (Debian's) and the cAdvisor stand-in on 127.0.0.1 ports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import MON, Prometheus, free_port, project_config, start, start_node_exporter, stop

SCRIPT = MON / "worker-hosts" / "worker_targets.py"


def write_targets(folder, hosts: str, cadvisor: str, node: str) -> subprocess.CompletedProcess:
    env = {"HELICAL_WORKER_HOSTS": hosts, "WORKER_CADVISOR_PORT": cadvisor.rsplit(":", 1)[1],
           "WORKER_NODE_EXPORTER_PORT": node.rsplit(":", 1)[1], "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(SCRIPT), str(folder)], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def second_node_exporter(work_dir):
    proc, address = start_node_exporter(work_dir / "node-exporter-2.log")
    yield address
    stop(proc)


def test_worker_hosts_from_env_are_scraped_with_their_host_label(tmp_path, cadvisor, node_exporter,
                                                                 second_node_exporter):
    written = write_targets(tmp_path / "prometheus-targets", "gpu-a100-1=127.0.0.1", cadvisor, second_node_exporter)
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == "worker hosts scraped: gpu-a100-1 (127.0.0.1)"

    port = free_port()
    targets = {"prometheus": f"127.0.0.1:{port}", "airflow": f"127.0.0.1:{free_port()}",
               "pushgateway": f"127.0.0.1:{free_port()}", "cadvisor": cadvisor, "node": node_exporter,
               "dcgm": f"127.0.0.1:{free_port()}"}
    config = project_config(targets, tmp_path)
    proc = start(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{port}"], f"http://127.0.0.1:{port}/-/ready",
                 tmp_path / "prometheus.log")
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        prom.wait_series('up{job="node", host="gpu-a100-1"} == 1')
        prom.wait_series('up{job="node", host="central"} == 1')
        # the runner containers' series say which host they ran on, as the dashboards' host variable reads them
        found = prom.wait_series('container_cpu_usage_seconds_total{host="gpu-a100-1", container_label_app="helical-runner"}')
        assert found and all(s["metric"]["host"] == "gpu-a100-1" for s in found)

        # a second worker host joins: .env changes, the targets are written again, Prometheus follows alone
        again = write_targets(tmp_path / "prometheus-targets", "gpu-a100-1=127.0.0.1,gpu-a100-2=localhost",
                              cadvisor, second_node_exporter)
        assert again.returncode == 0, again.stderr
        prom.wait_series('up{job="node", host="gpu-a100-2"} == 1', timeout=60)
        hosts = {s["metric"]["host"] for s in prom.series('up{job="node"}')}
        assert hosts == {"central", "gpu-a100-1", "gpu-a100-2"}
        # what the containers dashboard's host variable lists
        board = json.loads((MON / "grafana" / "dashboards" / "containers.json").read_text())
        [variable] = [v for v in board["templating"]["list"] if v["name"] == "host"]
        selector = variable["query"]["query"].removeprefix("label_values(").rsplit(", host)", 1)[0]
        listed = prom.api("label/host/values", **{"match[]": selector})["data"]
        assert set(listed) == {"central", "gpu-a100-1", "gpu-a100-2"}
    finally:
        stop(proc)


@pytest.mark.parametrize("hosts, problem", [
    ("gpu-a100-1", "expected NAME=ADDRESS"),
    ("gpu a100=10.0.0.1", "expected NAME=ADDRESS"),
    ("gpu-1=10.0.0.1:9100", "is not an IP address or a host name"),
    ("gpu-1=http://10.0.0.1", "is not an IP address or a host name"),
    ("gpu-1=10.0.0.1,gpu-1=10.0.0.2", "is listed twice"),
])
def test_a_bad_worker_host_entry_is_one_line_naming_it_and_writes_nothing(tmp_path, hosts, problem):
    result = write_targets(tmp_path / "targets", hosts, "127.0.0.1:8081", "127.0.0.1:9100")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: HELICAL_WORKER_HOSTS entry ") and problem in line, line
    assert not (tmp_path / "targets").exists()


def test_no_worker_hosts_writes_empty_target_lists(tmp_path):
    result = write_targets(tmp_path / "targets", "", "127.0.0.1:8081", "127.0.0.1:9100")
    assert result.returncode == 0 and result.stdout.strip() == "worker hosts scraped: none"
    assert sorted(p.name for p in (tmp_path / "targets").iterdir()) == ["workers-cadvisor.json", "workers-node.json"]
    assert all((tmp_path / "targets" / name).read_text().strip() == "[]"
               for name in ("workers-cadvisor.json", "workers-node.json"))
