"""Reading an .h5ad in place on S3 (helical_runner.data.s3_file) against moto's S3 server: the same bytes and rows
as the local file, a connection cut halfway through a response retried, an object replaced mid-read refused.

The cut is made by a real TCP proxy between boto3 and the S3 server that forwards the first part of one
response and then closes both sockets, as a load balancer or a restarting MinIO would.
"""

from __future__ import annotations

import logging
import socket
import threading

import numpy as np
import pytest

from conftest import BUCKET

SMALL_BLOCKS = {"block_size": 64 << 10, "cache_bytes": 256 << 10, "max_readahead": 256 << 10}


class CuttingProxy:
    """TCP proxy to the S3 server; `cut_next(n)` makes the next request's response stop after n bytes."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_after: int | None = None
        self.cuts = 0
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next(self, after_bytes: int) -> None:
        with self.lock:
            self.cut_after = after_bytes

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"budget": None}
            threading.Thread(target=self._requests, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, state), daemon=True).start()

    def _requests(self, client, upstream, state) -> None:
        try:
            while data := client.recv(65536):
                if data[:4] in (b"GET ", b"HEAD", b"PUT "):
                    with self.lock:
                        self.requests += 1
                        if self.cut_after is not None and data.startswith(b"GET "):
                            state["budget"], self.cut_after = self.cut_after, None
                upstream.sendall(data)
        except OSError:
            pass

    def _responses(self, upstream, client, state) -> None:
        try:
            while data := upstream.recv(65536):
                budget = state["budget"]
                if budget is not None and len(data) >= budget:
                    client.sendall(data[:budget])
                    with self.lock:
                        self.cuts += 1
                    break  # drop the connection mid-body
                if budget is not None:
                    state["budget"] = budget - len(data)
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def uploaded(s3, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/ranged.h5ad")
    return f"s3://{BUCKET}/incoming/ranged.h5ad"


def test_random_reads_return_the_objects_bytes(uploaded, cells_h5ad):
    from helical_runner.data.s3_file import S3File
    from helical_runner.data.storage import parse

    local = cells_h5ad.read_bytes()
    rng = np.random.default_rng(0)
    with S3File(parse(uploaded), **SMALL_BLOCKS) as remote:
        assert remote.size == len(local)
        for _ in range(200):
            start = int(rng.integers(0, len(local)))
            size = int(rng.choice([1, 100, 5000, 70_000, 300_000, 1_000_000]))
            remote.seek(start)
            assert remote.read(size) == local[start:start + size]
        remote.seek(0, 2)
        assert remote.read(10) == b""
        assert len(remote._blocks) <= 4  # never more than cache_bytes / block_size blocks held


def test_h5py_reads_the_same_rows_in_place_as_from_the_local_file(uploaded, cells_h5ad):
    from helical_runner.data.h5ad_io import H5adRows
    from helical_runner.data.s3_file import S3File
    from helical_runner.data.storage import parse

    remote_file = S3File(parse(uploaded), **SMALL_BLOCKS)
    with H5adRows(remote_file, uploaded) as remote, H5adRows(cells_h5ad, str(cells_h5ad)) as local:
        assert remote.n_obs == local.n_obs == 900
        for start, stop in ((0, 300), (300, 600), (600, 900)):
            a, b = remote.rows(start, stop), local.rows(start, stop)
            assert (a.X != b.X).nnz == 0
            assert list(a.obs.index) == list(b.obs.index)
            assert a.obs["cell_type"].tolist() == b.obs["cell_type"].tolist()
    # read in place: far fewer bytes than the file would take to download again and again
    assert remote_file.requests < 60


def test_a_connection_cut_mid_response_is_retried(uploaded, cells_h5ad, s3_server_control, monkeypatch, caplog):
    from helical_runner.data.h5ad_io import H5adRows
    from helical_runner.data.s3_file import S3File
    from helical_runner.data.storage import parse

    proxy = CuttingProxy(s3_server_control.port)
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    try:
        remote_file = S3File(parse(uploaded), **SMALL_BLOCKS)
        with caplog.at_level(logging.WARNING, logger="helical_runner.data.storage"), \
                H5adRows(remote_file, uploaded) as remote, H5adRows(cells_h5ad, str(cells_h5ad)) as local:
            proxy.cut_next(20_000)  # headers and the first part of a 64+ KiB body, then the connection drops
            a, b = remote.rows(0, 900), local.rows(0, 900)
        assert proxy.cuts == 1
        assert (a.X != b.X).nnz == 0
        assert any("retrying" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        proxy.close()


def test_an_object_replaced_while_it_is_read_is_refused(uploaded, s3, cells_h5ad):
    from helical_runner.errors import InputError
    from helical_runner.data.s3_file import S3File
    from helical_runner.data.storage import parse

    remote = S3File(parse(uploaded), **SMALL_BLOCKS)
    remote.read(1000)
    s3.put_object(Bucket=BUCKET, Key="incoming/ranged.h5ad", Body=b"another upload under the same key" * 10_000)
    remote.seek(200_000)
    with pytest.raises(InputError, match="changed while it was being read"):
        remote.read(1000)
