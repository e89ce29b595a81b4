"""Crafted .h5ad uploads (issue 20): files that make HDF5 read other files, or declare sizes they cannot hold.

Each is built with h5py from an ordinary valid file (real human genes, as bad_inputs makes them), changing
one thing the way the attacks seen did: an external link, a virtual dataset, external storage pointing at a
secret, chunks never written behind 10^12 declared elements, a sparse X's `shape` of 10^12 cells. Through
the real CLI each exits 65 with one line naming the file and the HDF5 object, quickly, and never shows
the secret; an unusual but honest file (everything gzip-compressed, soft links, a hard-link cycle) still
passes.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
from pathlib import Path

import anndata
import h5py
import numpy as np
import pytest

import bad_inputs
from conftest import BUCKET, run_cli
from helical_runner.errors import InputError
from helical_runner.data.h5ad_safety import MAX_RATIO, check_h5ad

SECRET = "wJalrXUtnFEMI-crafted-test-secret-K7MDENG"  # must never reach stdout, stderr or a report
TIMEOUT = 60  # seconds: a refusal reads metadata only; the attacks seen ran for minutes
TERA = 10**12


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """60 cells x 300 real genes, two cell types (bad_inputs' valid file)."""
    folder = tmp_path_factory.mktemp("crafted-base")
    (folder / "valid.h5ad").write_bytes(bad_inputs.valid_bytes(folder))
    return folder / "valid.h5ad"


def secret_file(folder: Path) -> Path:
    path = folder / "runner.env"
    path.write_text(f"AWS_ACCESS_KEY_ID=AKIACRAFTED\nAWS_SECRET_ACCESS_KEY={SECRET}\n")
    return path


def replace(f: h5py.File, path: str, **dataset) -> h5py.Dataset:
    del f[path]
    return f.create_dataset(path, **dataset)


# --- the crafted files: name -> (edit(file, folder), HDF5 object the line must name, words it must contain)

def external_link_in_obs(f, folder):
    del f["obs/donor"]
    f["obs/donor"] = h5py.ExternalLink(str(folder / "other.h5ad"), "/obs/donor")


def external_link_at_root(f, folder):
    del f["obs"]
    f["obs"] = h5py.ExternalLink(str(folder / "other.h5ad"), "/obs")


def virtual_dataset_in_obs(f, folder):
    codes = f["obs/cell_type/codes"]
    layout = h5py.VirtualLayout(shape=codes.shape, dtype=codes.dtype)
    layout[:] = h5py.VirtualSource(str(folder / "other.h5ad"), "obs/cell_type/codes", shape=codes.shape)
    del f["obs/cell_type/codes"]
    f.create_virtual_dataset("obs/cell_type/codes", layout)


def external_storage_of_a_secret(f, folder):
    """The label values of cell_type read from a file of secrets (the attack put /proc/self/environ there)."""
    source = secret_file(folder)
    width = source.stat().st_size // 2
    replace(f, "obs/cell_type/categories", shape=(2,), dtype=f"S{width}", external=[(str(source), 0, 2 * width)])


def external_storage_of_environ(f, folder):
    replace(f, "obs/cell_type/categories", shape=(2,), dtype="S2048", external=[("/proc/self/environ", 0, 4096)])


def unwritten_chunks(f, folder):
    f.create_dataset("obs/n_counts", shape=(TERA,), chunks=(1 << 16,), dtype="f4")  # no chunk ever written


def unwritten_obs_index(f, folder):
    replace(f, "obs/_index", shape=(TERA,), chunks=(4096,), dtype=h5py.string_dtype())


def unwritten_indptr(f, folder):
    replace(f, "X/indptr", shape=(TERA + 1,), chunks=(1 << 16,), dtype="i8")


def sparse_shape_of_a_trillion_cells(f, folder):
    f["X"].attrs["shape"] = np.array([TERA, f["X"].attrs["shape"][1]], dtype=np.int64)


CRAFTED = {
    "external-link-in-obs": (external_link_in_obs, "/obs/donor", "is an external link to"),
    "external-link-at-root": (external_link_at_root, "/obs", "is an external link to"),
    "virtual-dataset-in-obs": (virtual_dataset_in_obs, "/obs/cell_type/codes", "is a virtual dataset mapping"),
    "external-storage-secret": (external_storage_of_a_secret, "/obs/cell_type/categories",
                                "keeps its data in external file(s)"),
    "external-storage-environ": (external_storage_of_environ, "/obs/cell_type/categories",
                                 "keeps its data in external file(s) /proc/self/environ"),
    "unwritten-chunks": (unwritten_chunks, "/obs/n_counts", "declares 1,000,000,000,000 elements"),
    "unwritten-obs-index": (unwritten_obs_index, "/obs/_index", "declares 1,000,000,000,000 elements"),
    "unwritten-indptr": (unwritten_indptr, "/X/indptr", "declares 1,000,000,000,001 elements"),
    "sparse-shape-1e12-cells": (sparse_shape_of_a_trillion_cells, "/X (attribute shape)",
                                "declares 1,000,000,000,000 cells, more than a"),
}


def craft(valid: Path, folder: Path, edit) -> Path:
    """valid's copy with `edit` applied, next to other.h5ad (another valid file, the links' target)."""
    shutil.copy(valid, folder / "other.h5ad")
    path = folder / "crafted.h5ad"
    shutil.copy(valid, path)
    with h5py.File(path, "r+") as f:
        edit(f, folder)
    return path


def the_one_line(result) -> str:
    """stderr is exactly one line, the CLI's error line; neither output shows the secret."""
    assert SECRET not in result.stdout and SECRET not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("helical-runner: error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_inspect_refuses_a_crafted_file_naming_it_and_the_object(case, valid, tmp_path):
    edit, where, words = CRAFTED[case]
    path = craft(valid, tmp_path, edit)
    result = run_cli("inspect", "--data", str(path), env={"AWS_SECRET_ACCESS_KEY": SECRET}, timeout=TIMEOUT)
    line = the_one_line(result)
    assert result.returncode == 65, line
    assert str(path) in line and f" {where} " in line and words in line, line
    assert result.stdout == ""  # refused before any fact was printed


def test_check_h5ad_refuses_each_crafted_file_in_process(valid, tmp_path):
    """The same refusals from the function itself (what chunk, finetune and predict reach through H5adRows)."""
    for case, (edit, where, words) in CRAFTED.items():
        folder = tmp_path / case
        folder.mkdir()
        path = craft(valid, folder, edit)
        with h5py.File(path, "r") as f, pytest.raises(InputError) as refused:
            check_h5ad(f, "upload.h5ad", path.stat().st_size)
        assert str(refused.value).startswith("upload.h5ad: HDF5 ") and where in str(refused.value), case
        assert words in str(refused.value) and "\n" not in str(refused.value), case


def hdf5_library():
    """h5py's own libhdf5, for the one call h5py does not offer (H5Oincr_refcount)."""
    found = glob.glob(os.path.join(os.path.dirname(h5py.__file__) + ".libs", "libhdf5-*.so*")) or \
        glob.glob(os.path.join(os.path.dirname(h5py.__file__), "..", "h5py.libs", "libhdf5-*.so*"))
    found = [p for p in found if "hdf5_hl" not in p]
    if not found:
        pytest.skip("h5py's bundled libhdf5 not found (h5py built against a system HDF5)")
    return ctypes.CDLL(found[0])


def test_an_unlinked_object_reached_through_a_reference_attribute_is_refused(valid, tmp_path):
    """anndata 0.7's categoricals keep their categories behind an object reference: an anonymous dataset no
    link leads to (kept alive by its reference count) with external storage is found through it."""
    library = hdf5_library()

    def hidden_behind_a_reference(f, folder):
        source = secret_file(folder)
        hidden = f.create_dataset(None, shape=(2,), dtype="S16", external=[(str(source), 0, 32)])
        assert library.H5Oincr_refcount(ctypes.c_int64(hidden.id.id)) >= 0  # survives with no link
        codes = f["obs/cell_type/codes"][()]
        del f["obs/cell_type"]
        f.create_dataset("obs/cell_type", data=codes)
        f["obs/cell_type"].attrs["categories"] = hidden.ref

    path = craft(valid, tmp_path, hidden_behind_a_reference)
    result = run_cli("inspect", "--data", str(path), timeout=TIMEOUT)
    line = the_one_line(result)
    assert result.returncode == 65 and str(path) in line
    assert "referenced from /obs/cell_type (its attribute categories)" in line and "external file(s)" in line


def test_a_file_over_the_profile_cell_cap_needs_a_larger_profile_or_a_split(valid, tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("default: tiny\nprofiles:\n  tiny: {image: x, queue: cpu, device: cpu, gpus: 0,"
                        " precision: fp32, batch_size: 4, max_input_size: 512, cells_per_chunk: 100,"
                        " memory_limit: 1g, max_input_bytes: 1g, max_cells: 50}\n")
    out = tmp_path / "chunks"
    result = run_cli("chunk", "--input", str(valid), "--output", str(out),
                     env={"HELICAL_PROFILES": str(profiles)}, timeout=TIMEOUT)
    assert result.returncode == 65
    line = [line for line in result.stderr.splitlines() if line.startswith("helical-runner: error: ")][-1]
    assert str(valid) in line and "declares 60 cells, over the profile's cap of 50 (max_cells)" in line
    assert "use a larger profile or split the file" in line


def test_chunk_refuses_a_crafted_file_and_writes_only_its_error(valid, tmp_path):
    path = craft(valid, tmp_path, external_storage_of_a_secret)
    out = tmp_path / "chunks"
    result = run_cli("chunk", "--input", str(path), "--output", str(out), "--cells-per-chunk", "20",
                     timeout=TIMEOUT)
    assert result.returncode == 65
    assert SECRET not in result.stdout + result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("helical-runner: error: ")]
    assert len(errors) == 1 and str(path) in errors[0] and "/obs/cell_type/categories" in errors[0]
    assert [p.name for p in out.iterdir()] == ["error.json"]
    report = (out / "error.json").read_text()
    assert SECRET not in report and json.loads(report)["exit_code"] == 65


def test_a_crafted_file_read_in_place_from_s3_is_refused(s3, valid, tmp_path):
    path = craft(valid, tmp_path, external_storage_of_a_secret)
    s3.upload_file(str(path), BUCKET, "incoming/crafted.h5ad")
    url = f"s3://{BUCKET}/incoming/crafted.h5ad"
    result = run_cli("inspect", "--data", url, timeout=TIMEOUT)
    line = the_one_line(result)
    assert result.returncode == 65 and url in line and " /obs/cell_type/categories " in line


def test_finetune_from_s3_refuses_a_file_declaring_a_trillion_cells(s3, valid, tmp_path, tiny_model):
    path = craft(valid, tmp_path, sparse_shape_of_a_trillion_cells)
    s3.upload_file(str(path), BUCKET, "incoming/trillion.h5ad")
    url = f"s3://{BUCKET}/incoming/trillion.h5ad"
    result = run_cli("finetune", "--data", url, "--label-column", "cell_type", "--output",
                     f"s3://{BUCKET}/runs/trillion", "--precision", "fp32", timeout=TIMEOUT)
    assert result.returncode == 65, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("helical-runner: error: ")]
    assert len(errors) == 1 and url in errors[0]
    assert "/X (attribute shape) declares 1,000,000,000,000 cells" in errors[0]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/trillion/").get("Contents", [])]
    assert [k for k in keys if "/lease." not in k] == ["runs/trillion/error.json"]  # no model, no report
    error = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/trillion/error.json")["Body"].read())
    assert error["exit_code"] == 65 and "/X (attribute shape)" in error["error"]


@pytest.fixture(scope="module")
def honest(valid, tmp_path_factory) -> Path:
    """valid, with everything gzip-compressed at level 9, a 64 MB all-zero array in uns in 16 MB chunks (at
    gzip's best ratio, about 1028:1), soft links (one dangling) and a group linked inside itself."""
    adata = anndata.read_h5ad(valid)
    path = tmp_path_factory.mktemp("honest") / "gzipped.h5ad"
    adata.write_h5ad(path, compression="gzip", compression_opts=9)
    with h5py.File(path, "r+") as f:
        blank = f["uns"].create_dataset("blank", data=np.zeros(1 << 24, dtype=np.float32), chunks=(1 << 22,),
                                        compression="gzip", compression_opts=9)
        assert 1000 < blank.nbytes / blank.id.get_storage_size() < MAX_RATIO  # squeezed as far as gzip goes
        assert f["X/data"].compression == "gzip"
        f["uns/alias"] = h5py.SoftLink("/obs")
        f["uns/dangling"] = h5py.SoftLink("/nowhere")
        f["uns/loop"] = f["uns"]
    return path


def test_an_unusual_but_honest_file_opens_and_reads(honest, valid):
    from helical_runner.data.h5ad_io import H5adRows

    with H5adRows(honest, str(honest), max_cells=60) as rows, H5adRows(valid, str(valid)) as plain:
        assert rows.n_obs == 60 and rows.var_names == plain.var_names
        assert (rows.rows(0, 60).X != plain.rows(0, 60).X).nnz == 0


@pytest.mark.slow  # inspect of a file it accepts imports torch and helical: about 10 s
def test_inspect_of_an_unusual_but_honest_file_says_what_it_would_of_the_plain_one(honest, tiny_model):
    result = run_cli("inspect", "--data", str(honest), "--label-column", "cell_type", timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{honest}: 60 cells x 300 genes" in result.stdout and "problem: none" in result.stdout


@pytest.mark.slow  # fine-tunes the tiny model first (predict needs a model folder)
def test_predict_refuses_a_crafted_file(valid, tmp_path, tiny_model):
    run = tmp_path / "run"
    trained = run_cli("finetune", "--data", str(valid), "--label-column", "cell_type", "--output", str(run),
                      "--precision", "fp32", "--batch-size", "16", "--epochs", "1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    path = craft(valid, tmp_path, external_link_in_obs)
    out = tmp_path / "predicted"
    result = run_cli("predict", "--model", str(run / "model"), "--data", str(path), "--output", str(out),
                     "--precision", "fp32", timeout=TIMEOUT)
    assert result.returncode == 65, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("helical-runner: error: ")]
    assert len(errors) == 1 and str(path) in errors[0] and " /obs/donor is an external link to " in errors[0]
    assert [p.name for p in out.iterdir() if not p.name.startswith("lease.")] == ["error.json"]
