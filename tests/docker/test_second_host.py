"""scripts/second-host.sh: a second host on this machine for the worker-host tests (issue 24): its own network
namespace reached only over a veth pair, and its own Docker engine in it. A container started on that engine
runs there (this machine's engine never sees it) and reaches this machine at the veth's far end, as a worker
host's runners reach the central host; a restart keeps the images it was given."""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "helical-base:bookworm-py312"
PEER = "10.203.0.1"  # this machine, as the second host sees it


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/second-host.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def docker(socket: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"DOCKER_HOST": f"unix://{socket}"} if socket else {})}
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def second_host():
    if os.geteuid() != 0:
        pytest.skip("network namespaces and a second dockerd need root (the docker suite runs as root here)")
    if docker(None, "image", "inspect", IMAGE).returncode != 0:
        pytest.skip(f"{IMAGE} is not on this machine's engine (scripts/docker-base-image.sh makes it)")
    started = script("up")
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().splitlines()[-1]
    stopped = script("down")
    assert stopped.returncode == 0, stopped.stderr


def test_a_container_on_the_second_engine_runs_there_and_reaches_this_machine(second_host):
    loaded = script("load", IMAGE)
    assert loaded.returncode == 0, loaded.stderr

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = f"seen from {self.client_address[0]}".encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((PEER, 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    network = "second-host-test"
    docker(second_host, "network", "create", network)
    try:
        run = docker(second_host, "run", "--name", "on-the-second-host", "--network", network, IMAGE, "python3", "-c",
                     "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                     f"http://{PEER}:{server.server_address[1]}/")
        assert run.returncode == 0, run.stderr
        # the request left the second host's own container network (its address pool), through the veth
        assert run.stdout.strip().startswith("seen from 10.204."), run.stdout
        assert "on-the-second-host" in docker(second_host, "ps", "-a", "--format", "{{.Names}}").stdout
        assert "on-the-second-host" not in docker(None, "ps", "-a", "--format", "{{.Names}}").stdout
    finally:
        docker(second_host, "rm", "-f", "on-the-second-host")
        docker(second_host, "network", "rm", network)
        server.shutdown()

    # down and up again: the engine comes back with the images it was given (no second 9 GB copy per run)
    assert script("down").returncode == 0 and script("up").returncode == 0
    assert docker(second_host, "image", "inspect", IMAGE).returncode == 0
