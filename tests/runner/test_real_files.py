"""What real files showed (issue 22): float counts with round-off, anndata < 0.7's top-level raw.X / raw.var,
non-integer errors that show the value and say what X looks like, `inspect` on files with dozens of obs
columns, and the synthetic generator asked for more genes than its table holds.

Every file is built from test_user_files' truth (real human genes, marker counts) in the layout named.
"""

from __future__ import annotations

import json

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helical_runner.cli import main
from helical_runner.data.dataset import open_dataset
from helical_runner.errors import InputError
from helical_runner.data.h5ad_io import H5adRows
from helical_runner.data.h5ad_layout import read_frame
from helical_runner.data.synthetic import make_h5ad
from test_user_files import (N_CELLS, N_GENES, assert_same_tokens, expected_tokens, log_normalised,  # noqa: F401
                             model_files, runner_tokens, truth, write)


def with_round_off(X: sp.csr_matrix, size: float, seed: int = 3) -> sp.csr_matrix:
    """X as floats after a CSV round trip: every count off by up to `size` (0.9999999999999 for 1)."""
    noisy = X.astype(np.float64)
    noisy.data += np.random.default_rng(seed).uniform(-size, size, noisy.data.size)
    return noisy


# ------------------------------------------------------------------ float counts with round-off

def test_float_counts_with_round_off_are_counts(tmp_path, truth, model_files, capfd):
    X = with_round_off(truth["X"], 1e-12)
    assert (X.data != np.rint(X.data)).all()
    path = write(tmp_path / "csv-round-trip.h5ad", X, truth)
    ours, layout = runner_tokens(model_files, path)
    assert layout["counts"] == "X" and 0 < layout["counts_round_off"] <= 1e-12
    assert layout["places"]["X"].startswith("float counts with round-off (float64, up to ")
    assert_same_tokens(ours, expected_tokens(model_files, truth))
    with H5adRows(path, path.name) as rows:  # rounded where read, not only judged
        assert np.array_equal(rows.rows(0, rows.n_obs).X.toarray(), truth["X"].toarray())

    assert main(["inspect", "--data", str(path)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[1] == "counts: X (csr_matrix, float64, float counts with round-off: rounded)"
    assert out[2].startswith("X: csr_matrix, float counts with round-off (float64, up to ")


def test_round_off_outside_the_sample_is_rounded_too(tmp_path, truth, model_files):
    """The sample (start, middle, end) is exact; rows between hold round-off: every chunk still reads."""
    exact = sp.vstack([truth["X"]] * 10, format="csr")  # 600 cells: rows 66-266 are not sampled
    noisy = exact.astype(np.float64)
    lo, hi = noisy.indptr[100], noisy.indptr[200]
    noisy.data[lo:hi] -= 1e-9
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.tile(truth["obs"]["cell_type"], 10))},
                       index=[f"cell-{i}" for i in range(exact.shape[0])])
    path = tmp_path / "tiled.h5ad"
    anndata.AnnData(X=noisy, obs=obs, var=pd.DataFrame(index=truth["ids"])).write_h5ad(path)
    dataset = open_dataset(str(path), tmp_path, cells_per_chunk=100)
    try:
        assert dataset.layout["counts_round_off"] == 0.0  # the sample saw exact integers
        loaded = sp.vstack([dataset.load(i).X for i in range(dataset.n_chunks)], format="csr")
    finally:
        dataset.close()
    assert np.array_equal(loaded.toarray(), exact.toarray())


def test_values_further_than_round_off_are_refused_with_their_digits(tmp_path, truth):
    X = truth["X"].copy()
    X.data[5] = 0.99999  # 1e-5 from 1: not round-off
    path = write(tmp_path / "almost.h5ad", X, truth)
    cell = truth["obs"].index[np.searchsorted(X.indptr, 5, side="right") - 1]
    with pytest.raises(InputError) as error:
        H5adRows(path, "almost.h5ad")
    assert str(error.value) == (f"almost.h5ad: no raw integer counts found: X holds non-integer values such as "
                                f"0.99999 (cell '{cell}'); no raw/X; Geneformer needs raw counts")

    X64 = with_round_off(truth["X"], 1e-12)  # round-off everywhere, and one value 1.2e-5 from 3
    X64.data[0] = 2.9999877
    path = write(tmp_path / "csv.h5ad", X64, truth)
    with pytest.raises(InputError, match=r"X holds non-integer values such as 2\.9999877 \(cell 'AAAC0000-1'\); "):
        H5adRows(path, "csv.h5ad")


def test_non_integer_error_says_log_normalised_or_scaled(tmp_path, truth):
    logged = log_normalised(truth["X"])
    dense = truth["X"].toarray().astype(np.float64)
    scaled = (dense - dense.mean(axis=0)) / (dense.std(axis=0) + 1e-9)  # sc.pp.scale: dense z-scores
    path = write(tmp_path / "processed.h5ad", logged, truth, layers={"scaled": scaled.astype(np.float32)})
    with pytest.raises(InputError) as error:
        H5adRows(path, "processed.h5ad")
    message = str(error.value)
    assert "\n" not in message
    first = logged.data[0]
    assert f"X holds non-integer values such as {first!s} (cell 'AAAC0000-1'), which looks log-normalised (max " \
        in message
    assert "; layers/scaled holds negative counts (cell 'AAAC0000-1'), which looks scaled (mean " in message
    assert message.endswith("; Geneformer needs raw counts")

    cpm = sp.csr_matrix(sp.diags(1e6 / np.asarray(truth["X"].sum(axis=1)).ravel()) @ truth["X"])
    with pytest.raises(InputError, match=r", which looks normalised \(max [0-9.e+]+\); "):
        H5adRows(write(tmp_path / "cpm.h5ad", cpm, truth), "cpm.h5ad")


# ------------------------------------------------------------------ anndata < 0.7: raw.X, raw.var

def _records(index, columns: dict) -> np.ndarray:
    """A DataFrame as anndata 0.6 stored it: one compound dataset, the index first, strings as bytes."""
    fields = {"index": np.array(index, dtype="S"), **columns}
    return np.rec.fromarrays(list(fields.values()), names=list(fields))


def _write_csr(group: h5py.Group, name: str, X: sp.csr_matrix) -> None:
    """A sparse matrix as anndata 0.6's h5py wrapper wrote it: data/indices/indptr, h5sparse attributes."""
    node = group.create_group(name)
    node.attrs["h5sparse_format"], node.attrs["h5sparse_shape"] = "csr", np.array(X.shape)
    for part in ("data", "indices", "indptr"):
        node[part] = getattr(X, part)


def write_anndata_06(path, truth, raw_x: str = "csr"):
    """anndata 0.6's layout (`_to_dict_fixed_width_arrays`): X log-normalised over every second gene (the
    highly variable ones), raw counts of every gene as top-level raw.X, their genes in raw.var (symbols as
    the index, Ensembl ids in gene_ids), obs/var compound datasets, categoricals as codes with their levels
    in uns/<column>_categories (raw.cat/<column>_categories for raw.var's)."""
    hvg = slice(None, None, 2)
    with h5py.File(path, "w") as f:
        f["X"] = log_normalised(truth["X"][:, hvg]).toarray()
        labels = truth["obs"]["cell_type"]
        f["obs"] = _records(truth["obs"].index, {"cell_type": labels.cat.codes.to_numpy().astype(np.int8),
                                                 "n_genes": np.diff(truth["X"].indptr).astype(np.int64)})
        f["var"] = _records(np.array(truth["symbols"])[hvg], {"gene_ids": np.array(truth["ids"], dtype="S")[hvg]})
        f.create_group("uns")["cell_type_categories"] = np.array(labels.cat.categories, dtype="S")
        if raw_x == "csr":
            _write_csr(f, "raw.X", truth["X"])
        else:
            f["raw.X"] = truth["X"].toarray()
        f["raw.var"] = _records(truth["symbols"], {"gene_ids": np.array(truth["ids"], dtype="S"),
                                                   "feature_types": np.zeros(N_GENES, dtype=np.int8)})
        f.create_group("raw.cat")["feature_types_categories"] = np.array(["Gene Expression"], dtype="S")
        f.create_group("raw.varm")
        for empty in ("obsm", "varm"):
            f.create_group(empty)
    return path


@pytest.mark.parametrize("raw_x", ["csr", "dense"])
def test_anndata_06_raw_x_is_read_as_raw(tmp_path, truth, model_files, raw_x, capfd):
    path = write_anndata_06(tmp_path / "old.h5ad", truth, raw_x)
    with pytest.warns(Warning):  # anndata's own reader agrees this is raw (and warns about the old format)
        adata = anndata.read_h5ad(path)
    assert adata.raw.shape == (N_CELLS, N_GENES) and adata.shape == (N_CELLS, N_GENES // 2)

    ours, layout = runner_tokens(model_files, path)
    assert layout["counts"] == "raw.X" and layout["n_vars"] == N_GENES
    assert layout["counts_encoding"] == ("csr_matrix" if raw_x == "csr" else "dense")
    assert layout["gene_source"] == "raw.var var['gene_ids']" and layout["gene_kind"] == "ensembl"
    assert layout["places"]["X"].startswith("non-integer values")
    assert layout["obs_columns"] == {"cell_type": "categorical", "n_genes": "integer"}
    assert_same_tokens(ours, expected_tokens(model_files, truth))
    with H5adRows(path, "old.h5ad", counts="raw") as rows:  # --counts raw names it too
        assert rows.layout.counts == "raw.X"
        with h5py.File(path) as f:
            raw_var = read_frame(f["raw.var"], "raw.var")
        assert list(raw_var.index) == truth["symbols"] and list(raw_var["gene_ids"]) == truth["ids"]
        assert list(raw_var["feature_types"].unique()) == ["Gene Expression"]
        assert list(rows.rows(0, N_CELLS).obs["cell_type"]) == list(truth["obs"]["cell_type"])

    assert main(["inspect", "--data", str(path)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[1].startswith(f"counts: raw.X ({'csr_matrix' if raw_x == 'csr' else 'dense'}, float32); X holds "
                             "non-integer values such as ")
    assert "no raw/X" not in out[1]
    assert any(line.startswith("label column cell_type: 2 values (") for line in out)
    assert "and 1 other obs column: 1 numeric QC or per-cell ids (n_genes)" in out


# ------------------------------------------------------------------ inspect: likely label columns first

def test_inspect_lists_likely_label_columns_then_sums_up_the_rest(tmp_path, truth, capfd):
    """A CELLxGENE-like obs: a few label columns among constant columns, QC numbers and per-cell ids."""
    rng = np.random.default_rng(5)
    obs = truth["obs"].copy()
    obs["leiden"] = pd.Categorical(rng.integers(0, 4, N_CELLS).astype(str))
    obs["batch"] = rng.integers(1, 3, N_CELLS)  # integer labels, few of them
    obs["is_primary_data"] = True  # one value
    obs["organism"] = pd.Categorical(["Homo sapiens"] * N_CELLS)
    obs["n_genes_by_counts"] = np.diff(truth["X"].indptr).astype(np.int32)
    assert obs["n_genes_by_counts"].nunique() > 0.2 * N_CELLS  # QC numbers: few cells share a value
    obs["total_counts"] = np.asarray(truth["X"].sum(axis=1)).ravel()
    obs["pct_counts_mt"] = rng.uniform(0, 5, N_CELLS)
    obs["barcode"] = pd.Categorical([f"BC{i:05d}" for i in range(N_CELLS)])  # one per cell
    obs["score"] = np.nan
    path = write(tmp_path / "qc.h5ad", truth["X"], {**truth, "obs": obs})

    assert main(["inspect", "--data", str(path)]) == 0
    out = capfd.readouterr().out.splitlines()
    labels = [line.split(":")[0] for line in out if line.startswith("label column ")]
    assert labels == ["label column cell_type", "label column leiden", "label column batch"]
    assert out[-2] == ("and 7 other obs columns: 2 with a single value (is_primary_data, organism); 1 without "
                       "values (score); 4 numeric QC or per-cell ids (n_genes_by_counts, total_counts, "
                       "pct_counts_mt, barcode)")

    assert main(["inspect", "--data", str(path), "--json"]) == 0
    facts = json.loads(capfd.readouterr().out)
    assert facts["label_columns"] == ["cell_type", "leiden", "batch"]
    assert facts["other_obs_columns"] == {
        "count": 7, "one_value": ["is_primary_data", "organism"], "no_values": ["score"],
        "numeric_or_per_cell": ["n_genes_by_counts", "total_counts", "pct_counts_mt", "barcode"]}
    assert set(facts["labels"]["cell_type"]["values"]) == {"B cell", "CD4 T cell"}

    # the asked-for column is listed with the likely ones whatever it looks like
    assert main(["inspect", "--data", str(path), "--label-column", "n_genes_by_counts", "--json"]) == 0
    assert "n_genes_by_counts" in json.loads(capfd.readouterr().out)["label_columns"]


def test_inspect_with_no_obs_columns_says_so(tmp_path, truth, capfd):
    path = write(tmp_path / "bare.h5ad", truth["X"], {**truth, "obs": pd.DataFrame(index=truth["obs"].index)})
    assert main(["inspect", "--data", str(path)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[-2:] == ["label columns: none (obs has no columns)", "problem: none"]


# ------------------------------------------------------------------ the synthetic generator

def test_synthetic_data_caps_genes_at_its_table_and_says_so(tmp_path, capfd):
    from helical_runner.data.synthetic import panel

    held = len(panel())
    path = make_h5ad(tmp_path / "many.h5ad", n_cells=20, n_genes=held + 571, genes_per_cell=50)
    err = capfd.readouterr().err.splitlines()
    assert err == [f"synthetic: {held + 571} genes asked for, but the gene table holds {held} protein-coding "
                   f"genes: writing {held}"]
    with h5py.File(path) as f:
        assert tuple(f["X"].attrs["shape"]) == (20, held) and f["var/_index"].shape == (held,)
    with H5adRows(path, "many.h5ad") as rows:  # consistent: it opens
        assert rows.layout.n_vars == held


# ------------------------------------------------------------------ unlabelled files (issue 23's upload routing)

def test_inspect_of_an_unlabelled_file_is_no_problem_when_the_run_may_annotate_it(tmp_path, truth, model_files,
                                                                                  capfd):
    """Most users' files carry no cell types: with --unlabelled-ok a missing label column is a fact
    (inspect.json labelled: false, the run annotates instead), without it the run's one-line problem."""
    path = write(tmp_path / "unlabelled.h5ad", truth["X"], truth)
    out = tmp_path / "out"
    assert main(["inspect", "--data", str(path), "--label-column", "no_such_column", "--unlabelled-ok",
                 "--output", str(out)]) == 0
    facts = json.loads((out / "inspect.json").read_text())
    assert facts["labelled"] is False and facts["problem"] is None
    assert facts["unlabelled"] == f"{path}: no obs column 'no_such_column' usable as labels (categorical obs " \
                                  "columns: cell_type)"
    assert capfd.readouterr().out.splitlines()[-2].startswith("unlabelled: ")

    assert main(["inspect", "--data", str(path), "--label-column", "no_such_column"]) == 65
    assert main(["inspect", "--data", str(path), "--label-column", "cell_type", "--unlabelled-ok",
                 "--output", str(out)]) == 0
    assert json.loads((out / "inspect.json").read_text())["labelled"] is True
