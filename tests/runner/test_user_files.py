""".h5ad files shaped as users' tools write them: each kind gives the tokens helical gives on the plain
file (raw counts in X, Ensembl ids in var['ensembl_id']), or stops with one line naming the problem.

Every file is built here from one small truth (real human genes and marker counts, real symbols), in the
layout of the tool named in the test: scanpy, CELLxGENE, 10x/CellRanger, R converters (SeuratDisk, sceasy,
zellkonverter), anndata 0.7.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import MODEL
from helical_reference import helical_tokens
from helical_runner.cli import main
from helical_runner.errors import InputError
from helical_runner.data.h5ad_io import H5adRows
from helical_runner.models.geneformer.files import locate
from helical_runner.data.synthetic import panel
from helical_runner.models.geneformer.tokenizer import GeneformerTokenizer

FIELD_CASES = Path(__file__).parent / "data" / "field-cases"
N_CELLS, N_GENES = 60, 120


@pytest.fixture(scope="module")
def truth():
    """Raw counts of 60 cells (B and T cells with their markers) over 120 real genes, and their labels."""
    genes = panel(N_GENES)
    rng = np.random.default_rng(7)
    types = np.array(["B cell", "CD4 T cell"])[rng.integers(0, 2, N_CELLS)]
    X = rng.poisson(0.6, size=(N_CELLS, N_GENES))
    X[types == "B cell", 0:10] += rng.poisson(20, size=((types == "B cell").sum(), 10))  # MS4A1, CD79A, ...
    X[types == "CD4 T cell", 10:20] += rng.poisson(20, size=((types == "CD4 T cell").sum(), 10))  # CD3E, IL7R, ...
    obs = pd.DataFrame({"cell_type": pd.Categorical(types)}, index=[f"AAAC{i:04d}-1" for i in range(N_CELLS)])
    return {"X": sp.csr_matrix(X.astype(np.float32)), "ids": list(genes["ensembl_id"]),
            "symbols": list(genes["symbol"]), "obs": obs}


@pytest.fixture(scope="module")
def model_files(tiny_model):
    return locate(MODEL, fetch_missing=False)


def expected_tokens(model_files, truth) -> list[np.ndarray]:
    """helical on the plain file: counts in X, ids in var['ensembl_id']."""
    adata = anndata.AnnData(X=truth["X"].copy(), obs=truth["obs"].copy(),
                            var=pd.DataFrame({"ensembl_id": truth["ids"]}, index=truth["ids"]))
    return helical_tokens(model_files, adata)


def runner_tokens(model_files, path: Path, **choices) -> tuple[list[np.ndarray], dict]:
    with H5adRows(path, path.name, **choices) as rows:
        part = rows.rows(0, rows.n_obs)
        tokens = GeneformerTokenizer(model_files).tokenize(part.X, rows.gene_ids, part.obs.index)
        return tokens.input_ids, rows.layout.summary()


def assert_same_tokens(ours, theirs):
    assert len(ours) == len(theirs) == N_CELLS
    for mine, helical in zip(ours, theirs):
        assert np.array_equal(mine, helical)


def log_normalised(X: sp.csr_matrix) -> sp.csr_matrix:
    """scanpy's normalize_total(target_sum=1e4) + log1p, as users leave X before saving."""
    totals = np.asarray(X.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1e4 / totals) @ X).log1p().astype(np.float32)


def write(path: Path, X, truth, var=None, **parts) -> Path:
    var = var if var is not None else pd.DataFrame(index=truth["ids"])
    anndata.AnnData(X=X, obs=truth["obs"], var=var, **parts).write_h5ad(path)
    return path


# ------------------------------------------------------------------ where the counts are

def test_scanpy_counts_in_a_layer(tmp_path, truth, model_files):
    path = write(tmp_path / "scanpy.h5ad", log_normalised(truth["X"]), truth, layers={"counts": truth["X"]})
    ours, layout = runner_tokens(model_files, path)
    assert layout["counts"] == "layers/counts" and layout["places"]["X"].startswith("non-integer values")
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def test_cellxgene_counts_in_raw_with_more_genes_than_var(tmp_path, truth, model_files):
    """CELLxGENE keeps raw counts in raw/X; after highly-variable-gene selection raw/var has more genes."""
    full = anndata.AnnData(X=truth["X"], obs=truth["obs"],
                           var=pd.DataFrame({"feature_name": truth["symbols"]}, index=truth["ids"]))
    full.raw = full
    hvg = full[:, ::2].copy()
    hvg.X = log_normalised(hvg.X)
    hvg.write_h5ad(tmp_path / "cellxgene.h5ad")
    ours, layout = runner_tokens(model_files, tmp_path / "cellxgene.h5ad")
    assert layout["counts"] == "raw/X" and layout["n_vars"] == N_GENES and layout["gene_source"] == "raw/var index"
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def test_counts_only_in_a_layer_and_no_x(tmp_path, truth, model_files):
    path = write(tmp_path / "layer-only.h5ad", None, truth, layers={"raw_counts": truth["X"]})
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
    ours, layout = runner_tokens(model_files, path)
    assert layout["counts"] == "layers/raw_counts" and layout["places"]["X"] == "absent"
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def test_any_integer_layer_is_found(tmp_path, truth, model_files):
    path = write(tmp_path / "spliced.h5ad", log_normalised(truth["X"]), truth,
                 layers={"scaled": log_normalised(truth["X"]), "spliced": truth["X"].astype(np.int32)})
    ours, layout = runner_tokens(model_files, path)
    assert layout["counts"] == "layers/spliced"
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def test_counts_flag_forces_a_place(tmp_path, truth, model_files):
    path = write(tmp_path / "two.h5ad", truth["X"], truth, layers={"counts": truth["X"]})
    _, layout = runner_tokens(model_files, path, counts="layers/counts")
    assert layout["counts"] == "layers/counts" and layout["counts_forced"]
    with pytest.raises(InputError, match=r"^two.h5ad: --counts layers/spliced: no such matrix \(places: X, layers/counts\)$"):
        runner_tokens(model_files, path, counts="layers/spliced")


def test_no_counts_anywhere_says_what_each_place_holds(tmp_path, truth):
    normalised = log_normalised(truth["X"])
    path = write(tmp_path / "normalised.h5ad", normalised, truth, layers={"scaled": normalised * 2})
    first, biggest = normalised.data[0], normalised.data.max()  # every digit of the value (issue 22)
    with pytest.raises(InputError) as error:
        H5adRows(path, "normalised.h5ad")
    assert str(error.value) == (
        f"normalised.h5ad: no raw integer counts found: X holds non-integer values such as {first!s} "
        f"(cell 'AAAC0000-1'), which looks log-normalised (max {biggest:.3g}); no raw/X; layers/scaled holds "
        f"non-integer values such as {2 * first!s} (cell 'AAAC0000-1'), which looks log-normalised "
        f"(max {2 * biggest:.3g}); Geneformer needs raw counts")


# ------------------------------------------------------------------ where the gene ids are

def test_10x_symbols_as_var_names_ids_in_gene_ids(tmp_path, truth, model_files):
    """scanpy.read_10x_h5: symbols as var names, Ensembl ids in var['gene_ids'], feature_types beside."""
    var = pd.DataFrame({"gene_ids": truth["ids"], "feature_types": "Gene Expression"}, index=truth["symbols"])
    ours, layout = runner_tokens(model_files, write(tmp_path / "10x.h5ad", truth["X"], truth, var))
    assert layout["gene_source"] == "var['gene_ids']" and layout["gene_kind"] == "ensembl"
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def test_versioned_ids_in_feature_id(tmp_path, truth, model_files):
    var = pd.DataFrame({"feature_id": [f"{g}.{i % 7 + 1}" for i, g in enumerate(truth["ids"])]},
                       index=[f"gene-{i}" for i in range(N_GENES)])
    ours, layout = runner_tokens(model_files, write(tmp_path / "versions.h5ad", truth["X"], truth, var))
    assert layout["gene_source"] == "var['feature_id']"
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def test_symbols_only_are_mapped_and_ensa_is_a_symbol(tmp_path, truth, model_files):
    """A file with only symbols: mapped through the model's mapping file. ENSA (a real gene) looks like
    the start of an Ensembl id but is a symbol."""
    symbols = truth["symbols"][:-1] + ["ENSA"]
    ids = truth["ids"][:-1] + ["ENSG00000143420"]  # ENSA's id
    path = write(tmp_path / "symbols.h5ad", truth["X"], truth, pd.DataFrame(index=symbols))
    ours, layout = runner_tokens(model_files, path)
    assert layout["gene_kind"] == "symbol"
    assert_same_tokens(ours, expected_tokens(model_files, {**truth, "ids": ids}))


def test_gene_column_flag_picks_a_column(tmp_path, truth, model_files):
    var = pd.DataFrame({"ensembl_id": ["ENSG00000000000"] * N_GENES, "my_ids": truth["ids"]}, index=truth["symbols"])
    path = write(tmp_path / "columns.h5ad", truth["X"], truth, var)
    ours, layout = runner_tokens(model_files, path, gene_column="my_ids")
    assert layout["gene_source"] == "var['my_ids']"
    assert_same_tokens(ours, expected_tokens(model_files, truth))
    with pytest.raises(InputError, match=r"--gene-column gene_symbols: var has no such column \(columns: ensembl_id, my_ids\)$"):
        runner_tokens(model_files, path, gene_column="gene_symbols")


# ------------------------------------------------------------------ how it is stored

@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.int64, np.float64])
def test_dense_x_of_any_numeric_dtype(tmp_path, truth, model_files, dtype):
    X = truth["X"].toarray()
    assert X.max() < 127  # fits every dtype here
    path = write(tmp_path / "dense.h5ad", X.astype(dtype), truth)
    ours, layout = runner_tokens(model_files, path)
    assert layout["counts_encoding"] == "dense" and layout["counts_dtype"] == np.dtype(dtype).name
    assert_same_tokens(ours, expected_tokens(model_files, {**truth, "X": sp.csr_matrix(X.astype(dtype))}))


def test_csc_x_gives_helicals_tokens(tmp_path, truth, model_files):
    """CSC (genes' cells together, as some converters write) is regrouped by rows once, then read like CSR."""
    path = write(tmp_path / "csc.h5ad", truth["X"].tocsc(), truth)
    ours, layout = runner_tokens(model_files, path)
    assert layout["counts_encoding"] == "csc_matrix"
    assert_same_tokens(ours, expected_tokens(model_files, truth))


def _write_r_converter(path: Path, truth, categories_in: str) -> Path:
    """What SeuratDisk/sceasy-era converters write: plain groups, no encoding attributes anywhere, ids in
    var/_index, symbols in var/features, categoricals as codes with their levels in __categories.
    'anndata-0.7': the same with anndata 0.7's dataframe attributes and levels referenced from uns."""
    X = truth["X"]
    with h5py.File(path, "w") as f:
        if categories_in == "anndata-0.7":
            f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        x = f.create_group("X")
        x.attrs["h5sparse_format"] = "csr"
        x.attrs["h5sparse_shape"] = X.shape
        for name in ("data", "indices", "indptr"):
            x[name] = getattr(X, name)
        var = f.create_group("var")
        var["_index"] = np.array(truth["ids"], dtype="S")
        var["features"] = np.array(truth["symbols"], dtype="S")
        obs = f.create_group("obs")
        obs["_index"] = np.array(truth["obs"].index, dtype="S")
        labels = truth["obs"]["cell_type"]
        obs["seurat_clusters"] = labels.cat.codes.to_numpy().astype(np.int32)
        levels = np.array(labels.cat.categories, dtype="S")
        if categories_in == "anndata-0.7":
            for group, columns in ((obs, ["seurat_clusters"]), (var, ["features"])):
                group.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.1.0", "_index": "_index",
                                    "column-order": np.array(columns, dtype=object)})
        if categories_in == "__categories":
            obs.create_group("__categories")["seurat_clusters"] = levels
        else:  # anndata 0.7: a reference to uns/<column>_categories in the column's attributes
            f.create_group("uns")["seurat_clusters_categories"] = levels
            obs["seurat_clusters"].attrs["categories"] = f["uns/seurat_clusters_categories"].ref
    return path


@pytest.mark.parametrize("categories_in", ["__categories", "uns", "anndata-0.7"])
def test_r_converter_and_anndata_07_layouts(tmp_path, truth, model_files, categories_in):
    path = _write_r_converter(tmp_path / "seurat.h5ad", truth, categories_in)
    ours, layout = runner_tokens(model_files, path)
    assert layout["gene_source"] == "index" and layout["counts"] == "X"
    assert_same_tokens(ours, expected_tokens(model_files, truth))
    with H5adRows(path, "seurat.h5ad") as rows:
        assert list(rows.rows(0, rows.n_obs).obs["seurat_clusters"]) == list(truth["obs"]["cell_type"])


# ------------------------------------------------------------------ labels

def test_missing_labels_unused_categories_and_numbers(tmp_path, truth, tiny_model, capfd):
    """NaN/None/NA are unlabelled (dropped, counted), an unused category is no class, numeric labels stay
    as they were written and come in numeric order (cluster 2 before cluster 10)."""
    obs = truth["obs"].copy()
    nullable = pd.array(["B" if t == "B cell" else "T" for t in obs["cell_type"]], dtype="string")
    nullable[[3, 8]] = pd.NA
    obs["cell_type"] = nullable
    obs["cluster"] = pd.Categorical([10 if t == "B" else 2 for t in nullable.fillna("B")], categories=[2, 3, 10])
    obs["doublet"] = pd.array([False] * 59 + [None], dtype="boolean")
    obs["n_genes"] = pd.array(list(range(59)) + [None], dtype="Int64")
    obs["score"] = np.where(np.arange(N_CELLS) % 9 == 0, np.nan, 1.0)
    path = tmp_path / "labels.h5ad"
    anndata.AnnData(X=truth["X"], obs=obs, var=pd.DataFrame(index=truth["ids"])).write_h5ad(path)
    out = tmp_path / "run"
    code = main(["finetune", "--data", str(path), "--label-column", "cell_type", "--output", str(out),
                 "--precision", "fp32", "--batch-size", "16"])
    assert code == 0, capfd.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == ["B", "T"] and report["cells"]["unlabelled"] == 2
    code = main(["finetune", "--data", str(path), "--label-column", "cluster", "--output", str(tmp_path / "run2"),
                 "--precision", "fp32", "--batch-size", "16"])
    assert code == 0
    assert json.loads((tmp_path / "run2" / "report.json").read_text())["labels"] == ["2", "10"]  # no class "3"
    code = main(["predict", "--model", str(tmp_path / "run2" / "model"), "--data", str(path),
                 "--output", str(tmp_path / "pred")])
    assert code == 0
    predictions = pd.read_csv(tmp_path / "pred" / "predictions.csv", dtype=str)
    assert set(predictions["predicted_label"]) <= {"2", "10"} and set(predictions["true_label"]) == {"2", "10"}
    table = json.loads((tmp_path / "pred" / "report.json").read_text())["class_metrics"]["per_class"]
    assert [row["class"] for row in table] == ["2", "10"]


# ------------------------------------------------------------------ the whole run, on the field cases

@pytest.mark.parametrize("name", sorted(p.name for p in FIELD_CASES.glob("*.h5ad")))
def test_field_cases_train_with_the_tokens_of_the_control(name, tmp_path, model_files, capfd):
    """The sample files of ../shared/field-cases (README there), copied into tests/runner/data."""
    ours, _ = runner_tokens(model_files, FIELD_CASES / name)
    control, _ = runner_tokens(model_files, FIELD_CASES / "control.h5ad")
    unlabelled = 1 if name.startswith("F12") else 0  # F12's missing label: tokenized, left out of training
    assert len(ours) == len(control) and all(np.array_equal(a, b) for a, b in zip(ours, control))
    local = tmp_path / name
    shutil.copyfile(FIELD_CASES / name, local)
    code = main(["finetune", "--data", str(local), "--label-column", "cell_type", "--output", str(tmp_path / "run"),
                 "--precision", "fp32", "--batch-size", "16"])
    lines = capfd.readouterr().err.splitlines()
    assert code == 0, lines[-3:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["labels"] == ["B", "T"]
    assert report["cells"]["unlabelled"] == unlabelled


def test_predict_finds_gene_ids_where_training_did(tmp_path, truth, tiny_model, capfd):
    """Trained with --gene-column my_ids (var['ensembl_id'] holds stale ids), the saved model makes predict
    read my_ids on another file of the same kind without being told."""
    stale = ["ENSG00000000000"] * N_GENES
    var = pd.DataFrame({"ensembl_id": stale, "my_ids": truth["ids"]}, index=truth["symbols"])
    train = write(tmp_path / "train.h5ad", truth["X"], truth, var)
    other = write(tmp_path / "other.h5ad", truth["X"][::-1], {**truth, "obs": truth["obs"].iloc[::-1]}, var)
    code = main(["finetune", "--data", str(train), "--label-column", "cell_type", "--output", str(tmp_path / "run"),
                 "--precision", "fp32", "--batch-size", "16", "--gene-column", "my_ids"])
    assert code == 0, capfd.readouterr().err[-2000:]
    assert json.loads((tmp_path / "run" / "model" / "classifier.json").read_text())["gene_column"] == "my_ids"
    code = main(["predict", "--model", str(tmp_path / "run" / "model"), "--data", str(other),
                 "--output", str(tmp_path / "pred")])
    assert code == 0, capfd.readouterr().err[-2000:]
    report = json.loads((tmp_path / "pred" / "report.json").read_text())
    assert report["data_layout"]["gene_source"] == "var['my_ids']"
    assert report["genes"]["in_vocabulary"] == N_GENES and report["cells"]["predicted"] == N_CELLS


def test_inspect_says_what_a_run_will_use(tmp_path, truth, tiny_model, capfd):
    code = main(["inspect", "--data", str(FIELD_CASES / "F1_counts_in_layer.h5ad"), "--label-column", "cell_type"])
    out = capfd.readouterr().out.splitlines()
    assert code == 0
    assert out[0].endswith("F1_counts_in_layer.h5ad: 60 cells x 10 genes")
    assert out[1].startswith("counts: layers/counts (csr_matrix, float32); X holds non-integer values such as 7.895")
    assert out[3] == "gene ids: index (Ensembl ids); 10 in gf-12L-38M-i4096's vocabulary, 0 collapsed into another gene's token"
    assert "label column cell_type: 2 values (B 30, T 30)" in out and out[-1] == "problem: none"

    normalised = write(tmp_path / "normalised.h5ad", log_normalised(truth["X"]), truth)
    code = main(["inspect", "--data", str(normalised), "--json", "--output", str(tmp_path / "out")])
    err = capfd.readouterr().err.splitlines()
    assert code == 65 and err[-1].startswith(f"helical-runner: error: {normalised}: no raw integer counts found: X holds")
    assert json.loads((tmp_path / "out" / "error.json").read_text())["command"] == "inspect"

    symbols = write(tmp_path / "10x.h5ad", truth["X"], truth, pd.DataFrame(
        {"gene_ids": truth["ids"]}, index=truth["symbols"]))
    code = main(["inspect", "--data", str(symbols), "--label-column", "celltype", "--json"])
    facts = json.loads(capfd.readouterr().out)
    assert code == 65 and facts["layout"]["gene_source"] == "var['gene_ids']"
    labels = facts["labels"]["cell_type"]
    assert set(labels["values"]) == {"B cell", "CD4 T cell"} and sum(labels["values"].values()) == N_CELLS
    assert labels["missing"] == 0
    assert facts["problem"].endswith("no obs column 'celltype' usable as labels (categorical obs columns: cell_type)")
