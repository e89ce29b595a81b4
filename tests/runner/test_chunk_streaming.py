"""`chunk` streams what it reads: obs a chunk's rows at a time, CSC counts through one regrouping pass on
scratch, an .h5ad on S3 in place (ranged GETs). Each must give the chunks and manifest that reading the
whole file with anndata would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BUCKET, run_cli

pytestmark = pytest.mark.slow  # each test runs `chunk` two or three times in a child process


@pytest.fixture(scope="module")
def rich_obs(cells_h5ad, tmp_path_factory):
    """The 900 test cells with obs columns of every kind a user's file has, stored as CSR and as CSC."""
    import anndata

    adata = anndata.read_h5ad(cells_h5ad)
    n = adata.n_obs
    rng = np.random.default_rng(3)
    adata.obs["batch"] = [f"run-{i % 7}" for i in range(n)]  # strings
    adata.obs["n_genes"] = rng.integers(100, 3000, size=n)  # ints
    adata.obs["pct_mito"] = rng.random(n).astype(np.float32)  # measurements
    adata.obs["is_doublet"] = rng.random(n) < 0.1  # booleans
    adata.obs["age"] = pd.array([None if i % 11 == 0 else 20 + i % 50 for i in range(n)], dtype="Int64")
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["unused type"])
    folder = tmp_path_factory.mktemp("rich")
    adata.write_h5ad(folder / "csr.h5ad")
    adata.X = adata.X.tocsc()
    adata.write_h5ad(folder / "csc.h5ad")
    return {"csr": folder / "csr.h5ad", "csc": folder / "csc.h5ad", "adata": adata}


def read_chunks(folder: Path):
    import anndata

    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest, [anndata.read_h5ad(folder / c["key"]) for c in manifest["chunks"]]


def test_obs_read_chunk_by_chunk_gives_anndatas_rows_and_value_counts(rich_obs, tmp_path):
    from helical_runner.data.dataset import summarise_obs

    out = tmp_path / "chunks"
    result = run_cli("chunk", "--input", str(rich_obs["csr"]), "--output", str(out), "--cells-per-chunk", "250")
    assert result.returncode == 0, result.stderr
    manifest, chunks = read_chunks(out)
    whole = rich_obs["adata"].obs
    counts, missing = summarise_obs(whole)  # what reading obs whole gives
    assert manifest["obs_value_counts"] == counts
    assert manifest["obs_missing"] == missing and missing["age"] == 82  # cells 0, 11, 22, ... have no age
    assert "pct_mito" not in manifest["obs_value_counts"]  # a measurement, never a label
    assert [len(c) for c in chunks] == [250, 250, 250, 150]
    got = pd.concat([c.obs for c in chunks])
    assert list(got.index) == list(whole.index)
    for column in whole.columns:
        assert got[column].astype(str).tolist() == whole[column].astype(str).tolist(), column
    assert list(chunks[0].obs["cell_type"].cat.categories) == list(whole["cell_type"].cat.categories)


def test_csc_counts_are_chunked_like_csr_and_scratch_is_left_empty(rich_obs, tmp_path):
    scratch = tmp_path / "scratch"
    outs = {}
    for layout in ("csr", "csc"):
        outs[layout] = tmp_path / layout
        result = run_cli("chunk", "--input", str(rich_obs[layout]), "--output", str(outs[layout]),
                         "--cells-per-chunk", "400", env={"HELICAL_SCRATCH": str(scratch)})
        assert result.returncode == 0, result.stderr
    assert "is CSC; regrouping" in result.stderr
    (csr_manifest, csr_chunks), (csc_manifest, csc_chunks) = read_chunks(outs["csr"]), read_chunks(outs["csc"])
    assert csc_manifest["n_cells"] == csr_manifest["n_cells"] == 900
    assert csc_manifest["layout"]["counts_encoding"] == "csc_matrix"
    for a, b in zip(csr_chunks, csc_chunks):
        assert (a.X != b.X).nnz == 0 and list(a.obs_names) == list(b.obs_names)
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # the regrouped rows are removed


def test_an_h5ad_on_s3_is_chunked_in_place_like_the_local_file(s3, rich_obs, tmp_path):
    s3.upload_file(str(rich_obs["csr"]), BUCKET, "incoming/in place.h5ad")
    local_out, remote_out, copied_out = tmp_path / "local", tmp_path / "remote", tmp_path / "copied"
    assert run_cli("chunk", "--input", str(rich_obs["csr"]), "--output", str(local_out),
                   "--cells-per-chunk", "300").returncode == 0
    remote = run_cli("chunk", "--input", f"s3://{BUCKET}/incoming/in place.h5ad", "--output", str(remote_out),
                     "--cells-per-chunk", "300")
    assert remote.returncode == 0, remote.stderr
    assert "read in place" in remote.stderr
    copied = run_cli("chunk", "--input", f"s3://{BUCKET}/incoming/in place.h5ad", "--output", str(copied_out),
                     "--cells-per-chunk", "300", env={"HELICAL_S3_INPUT": "download"})
    assert copied.returncode == 0, copied.stderr
    (local_manifest, local_chunks) = read_chunks(local_out)
    for out in (remote_out, copied_out):
        manifest, chunks = read_chunks(out)
        for key in ("n_cells", "obs_value_counts", "gene_ids", "layout"):
            assert manifest[key] == local_manifest[key], key
        for a, b in zip(local_chunks, chunks):
            assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a given size (tmpfs; mounting needs root, as the suites' apt installs do)."""
    import subprocess

    mounted = []

    def make(size_bytes: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(size_bytes // 1024, 16)}k", "tmpfs", str(folder)],
                       check=True)
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("helical-runner: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


def test_csc_needing_more_scratch_than_free_says_how_much_before_writing(rich_obs, tmp_path, small_disk):
    import h5py
    from helical_runner.errors import size_text

    with h5py.File(rich_obs["csc"], "r") as f:
        needed = f["X/data"].shape[0] * (8 + f["X/data"].dtype.itemsize)  # a (row, column, count) record a value
    scratch = small_disk(needed // 2)
    told = run_cli("inspect", "--data", str(rich_obs["csc"]), env={"HELICAL_SCRATCH": str(scratch)})
    assert told.returncode == 0, told.stderr  # the DAG's first step says it before chunk is tried
    assert f"chunk regroups them by cells once, needing {size_text(needed)} in {scratch}" in told.stdout
    result = run_cli("chunk", "--input", str(rich_obs["csc"]), "--output", str(tmp_path / "out"),
                     "--cells-per-chunk", "400", env={"HELICAL_SCRATCH": str(scratch)})
    assert result.returncode == 74  # the input is fine: another disk (or worker) will do
    line = one_error_line(result.stderr)
    assert "csc.h5ad" in line and "stored by genes (CSC)" in line and f"needs {size_text(needed)} of scratch" in line
    assert str(scratch) in line and ".tocsr()" in line
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # nothing half-written left behind


def test_a_full_output_disk_is_one_line_naming_the_file(rich_obs, small_disk):
    out = small_disk(64 * 1024) / "chunks"
    result = run_cli("chunk", "--input", str(rich_obs["csr"]), "--output", str(out), "--cells-per-chunk", "400")
    assert result.returncode == 74
    line = one_error_line(result.stderr)
    assert "no space left on device writing " + str(out) in line and "kB free" in line
    # the half-written chunk is removed, which leaves room for the error report
    assert [p.name for p in out.iterdir()] == ["error.json"]
    report = json.loads((out / "error.json").read_text())
    assert report["exit_code"] == 74 and report["error"] in line
