"""Fixtures for the Docker tests: the engine (started by scripts/suite-docker.sh), the runner image built
from docker/Dockerfile.runner by scripts/build-runner-image.sh, a data folder holding a tiny Geneformer,
and the docker-socket-proxy (docker/socket-proxy/haproxy.cfg run by Debian's haproxy)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER_TAG = os.environ.get("HELICAL_RUNNER_TAG", "helical-runner:cpu")
MODEL = "gf-12L-38M-i4096"


def engine_socket() -> str:
    """The engine's socket, starting the engine if needed (idempotent; prints the socket path)."""
    out = subprocess.run(["bash", str(REPO / "scripts/docker-engine.sh")], check=True, capture_output=True,
                         text=True, timeout=180)
    return out.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def docker_socket() -> str:
    return engine_socket()


@pytest.fixture(scope="session")
def docker_client(docker_socket):
    import docker

    client = docker.DockerClient(base_url=f"unix://{docker_socket}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def runner_image(docker_socket) -> str:
    """helical-runner:cpu, built (or found up to date) by the project's own script."""
    out = subprocess.run(["bash", str(REPO / "scripts/build-runner-image.sh"), "cpu"], capture_output=True,
                         text=True, timeout=3600, env={**os.environ, "DOCKER_HOST": f"unix://{docker_socket}"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A host data folder as users mount it at /data: helical's model cache with a tiny random model.

    World-writable because the container runs as uid 50000, not as the host user that made the folder.
    """
    root = tmp_path_factory.mktemp("data")
    (root / "scratch").mkdir()  # mounted read-write at /data/scratch, as the DAG mounts it
    subprocess.run([sys.executable, "-m", "helical_runner.data.synthetic", "model", "--cache-prefix",
                    str(root / "helical"), "--model", MODEL], check=True, capture_output=True, timeout=300)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return root


RUNNER_NETWORK = "helical-test-runners"  # not compose's helical-runners (tests/stack makes that one)


@pytest.fixture(scope="session")
def runner_network(docker_socket) -> str:
    """The runners' network (scripts/runner-network.sh); yields its gateway address on this host."""
    out = subprocess.run(["bash", str(REPO / "scripts/runner-network.sh"), RUNNER_NETWORK], check=True,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DOCKER_HOST": f"unix://{docker_socket}"})
    return out.stdout.split()[-1]


@pytest.fixture(scope="session")
def socket_proxy(docker_socket, data_dir, runner_network):
    """The socket proxy (haproxy + create filter) on a private port, allowing runners of config/profiles.yaml
    on the data folder and the runners' network; yields its tcp:// URL."""
    port = free_port()
    env = {**os.environ, "HELICAL_DATA_DIR": str(data_dir), "HELICAL_RUNNER_NETWORK": RUNNER_NETWORK,
           "HELICAL_PROFILES": str(REPO / "config/profiles.yaml")}
    out = subprocess.run(["bash", str(REPO / "scripts/socket-proxy.sh"), "--daemon", str(port), docker_socket],
                         check=True, capture_output=True, text=True, timeout=60, env=env)
    pids = [int(pid) for pid in out.stdout.split()]
    yield f"tcp://127.0.0.1:{port}"
    for pid in pids:
        os.kill(pid, 15)
