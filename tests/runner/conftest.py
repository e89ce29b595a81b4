"""Shared fixtures for the runner tests: a real S3 HTTP server (moto, standing in for MinIO), a tiny
random Geneformer in helical's cache layout, and synthetic .h5ad files with learnable cell types."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# helical reads its cache location once, at import: point it at a private cache before anything
# imports helical, so the tests never touch (or depend on) the user's ~/.cache/helical.
_CACHE_PREFIX = Path(tempfile.mkdtemp(prefix="helical-test-cache-"))
os.environ["CACHE_DIR_HELICAL_PREFIX"] = str(_CACHE_PREFIX)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.pop("PUSHGATEWAY_URL", None)

BUCKET = "helical"
MODEL = "gf-12L-38M-i4096"
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # shared helpers: mlflow_server.py
# Real .h5ad files from public repositories (SOURCES.md there), kept beside the checkout, never copied in
REAL_DATA = Path(os.environ.get("HELICAL_REAL_DATA", REPO_ROOT.parent / "shared" / "real-data"))


def real_file(name: str) -> Path:
    """A file of ../shared/real-data; the test is skipped, saying where it looked, when it is absent."""
    path = REAL_DATA / name
    if not path.is_file():
        pytest.skip(f"real-data fixture {path} is absent (set HELICAL_REAL_DATA to the folder holding it)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from helical_runner.data.synthetic import write_tiny_geneformer

    return write_tiny_geneformer(_CACHE_PREFIX, MODEL)


@pytest.fixture(scope="session")
def scgpt_stand_in(tiny_model) -> Path:
    """A random 2-layer, 64-wide scGPT (4 heads) over real human gene symbols where helical looks for
    scGPT_CP (data.synthetic.write_tiny_scgpt)."""
    from helical_runner.data.synthetic import write_tiny_scgpt
    from helical_runner.models.scgpt import files

    folder = write_tiny_scgpt(_CACHE_PREFIX, layers=2, width=64, heads=4)
    assert folder == files.model_dir()  # where helical (and the runner) look for scGPT_CP
    return folder


@pytest.fixture(scope="session")
def genept_table(tiny_model) -> Path:
    """A random 64-wide GenePT gene table over real human gene symbols where helical looks for it."""
    from helical_runner.data.synthetic import write_tiny_genept
    from helical_runner.models.genept import files

    path = write_tiny_genept(_CACHE_PREFIX, width=64)
    assert path == files.table_path()  # where helical (and the runner) look for GenePT's table
    return path


@pytest.fixture(scope="session")
def nicheformer_stand_in(tiny_model) -> Path:
    """A random 2-layer, 32-wide Nicheformer where helical looks for it."""
    from helical_runner.data.synthetic import write_tiny_nicheformer
    from helical_runner.models.nicheformer import files

    folder = write_tiny_nicheformer(_CACHE_PREFIX, layers=2, width=32, heads=4)
    assert folder == files.model_dir()  # where helical (and the runner) look for Nicheformer
    return folder


class S3Server:
    """moto's S3 server on a fixed port; stop() and start() again keep its data (moto keeps state in
    process memory), which is what an outage test needs."""

    def __init__(self, port: int):
        self.port = port
        self.server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def s3_server_control() -> S3Server:
    server = S3Server(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(s3_server_control):
    """moto's S3 server on 127.0.0.1: real HTTP, real boto3 client, as MinIO would be."""
    port = s3_server_control.port
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "S3_RETRY_SECONDS": "20"})
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint


@pytest.fixture
def s3(s3_server):
    """A boto3 client for the test server, and a clean bucket for each test."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])


@pytest.fixture(scope="session")
def cells_h5ad(tmp_path_factory) -> Path:
    """900 cells x 2,000 genes, 4 cell types with marker genes (learnable in a few steps)."""
    from helical_runner.data.synthetic import make_h5ad

    return make_h5ad(tmp_path_factory.mktemp("data") / "cells.h5ad", n_cells=900, n_genes=2000, n_types=4,
                     genes_per_cell=150, seed=1)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real CLI in a child process (as the container runs it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "helical_runner", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory):
    binary = shutil.which("prometheus-pushgateway")
    assert binary, "prometheus-pushgateway is installed by scripts/suite-runner.sh"
    port = free_port()
    # Debian's default persistence file is machine-wide: a private one keeps earlier runs' groups out
    state = tmp_path_factory.mktemp("pushgateway") / "metrics.data"
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={state}"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_get(url + "/-/ready") is not None, timeout=20)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None
