"""What people open after a run: predictions.h5ad (read by anndata, embeddings equal to helical's own
`get_embeddings`), umap.png, per-class metrics, per-step curves and report.html, from the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import MODEL, run_cli

LABEL = "cell_type"
EMPTY_CELL = 7  # a cell with no counts at all: Geneformer can't read it, its row must still be there


@pytest.fixture(scope="module")
def users_file(tmp_path_factory) -> Path:
    """300 cells in the synthetic layout, plus what users' obs tables hold: a free-text column, a count
    column, a nullable integer column, and one cell with no counts."""
    from helical_runner.data.synthetic import make_h5ad

    folder = tmp_path_factory.mktemp("outputs")
    path = make_h5ad(folder / "source.h5ad", n_cells=300, n_genes=2000, n_types=4, genes_per_cell=150, seed=3)
    adata = anndata.read_h5ad(path)
    X = adata.X.tolil()
    X[EMPTY_CELL, :] = 0
    adata.X = sp.csr_matrix(X)
    adata.X.eliminate_zeros()
    adata.obs["sample_note"] = [f"well {i % 7}" for i in range(adata.n_obs)]
    adata.obs["n_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.obs["replicate"] = pd.array([i % 3 if i % 5 else None for i in range(adata.n_obs)], dtype="Int64")
    adata.write_h5ad(folder / "cells.h5ad")
    return folder / "cells.h5ad"


@pytest.fixture(scope="module")
def finetuned(users_file, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    result = run_cli("finetune", "--data", str(users_file), "--label-column", LABEL, "--output", str(out),
                     "--precision", "fp32", "--batch-size", "16", "--lr", "2e-3", "--epochs", "2",
                     "--cells-per-chunk", "120")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def predicted(finetuned, users_file) -> Path:
    out = finetuned / "predict"
    # 120-cell chunks: three appends, the last one short
    result = run_cli("predict", "--model", str(finetuned / "model"), "--data", str(users_file), "--output", str(out),
                     "--precision", "fp32", "--cells-per-chunk", "120")
    assert result.returncode == 0, result.stderr
    return out


pytestmark = pytest.mark.slow


def test_predictions_h5ad_holds_every_cell_its_obs_predictions_and_embeddings(predicted, users_file):
    source = anndata.read_h5ad(users_file)
    result = anndata.read_h5ad(predicted / "predictions.h5ad")
    assert list(result.obs_names) == list(source.obs_names)
    assert result.X is None and result.n_vars == 0  # no copy of the counts
    for column in source.obs.columns:  # the user's columns come back with their values
        expected = source.obs[column]
        if isinstance(expected.dtype, pd.api.extensions.ExtensionDtype) and not isinstance(
                expected.dtype, pd.CategoricalDtype):
            expected = expected.astype("float64")
        assert result.obs[column].astype(str).tolist() == expected.astype(str).tolist(), column
    predicted_types = result.obs[f"predicted_{LABEL}"]
    labels = json.loads((predicted.parent / "model" / "classifier.json").read_text())["labels"]
    assert isinstance(predicted_types.dtype, pd.CategoricalDtype) and list(predicted_types.cat.categories) == labels
    embeddings = result.obsm["X_geneformer"]
    assert embeddings.shape == (source.n_obs, 64) and embeddings.dtype == np.float32  # the tiny model's hidden size
    # the empty cell keeps its row with nothing predicted; every other cell has a prediction
    assert pd.isna(predicted_types.iloc[EMPTY_CELL]) and np.isnan(result.obs["prediction_confidence"].iloc[EMPTY_CELL])
    assert np.isnan(embeddings[EMPTY_CELL]).all()
    others = np.arange(source.n_obs) != EMPTY_CELL
    assert predicted_types[others].notna().all() and np.isfinite(embeddings[others]).all()
    confidence = result.obs["prediction_confidence"][others]
    assert ((confidence >= 1 / len(labels)) & (confidence <= 1)).all()
    # the same predictions as predictions.csv
    with open(predicted / "predictions.csv") as handle:
        rows = {r["cell_id"]: r["predicted_label"] for r in csv.DictReader(handle)}
    assert {c: str(v) for c, v in predicted_types[others].items()} == rows


def test_embeddings_equal_helicals_get_embeddings(predicted, users_file, tmp_path):
    """helical's Geneformer on the same cells and the same fine-tuned encoder (its default cell mode and
    last layer) gives the embeddings predict stored."""
    from helical.models.geneformer import Geneformer, GeneformerConfig

    ours = anndata.read_h5ad(predicted / "predictions.h5ad").obsm["X_geneformer"]
    adata = anndata.read_h5ad(users_file)
    keep = np.arange(adata.n_obs) != EMPTY_CELL  # helical would average over zero genes for it
    adata = adata[keep].copy()
    if "ensembl_id" not in adata.var:
        adata.var["ensembl_id"] = adata.var_names
    config = GeneformerConfig(model_name=MODEL, batch_size=32, device="cpu")
    config.files_config["model_files_dir"] = predicted.parent / "model"  # the fine-tuned encoder
    helical = Geneformer(config)
    theirs = helical.get_embeddings(helical.process_data(adata, gene_names="ensembl_id"))
    assert theirs.shape == ours[keep].shape
    np.testing.assert_allclose(ours[keep], theirs, rtol=1e-4, atol=1e-5)


def test_prediction_report_scores_each_class(predicted):
    report = json.loads((predicted / "report.json").read_text())
    with open(predicted / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    table = {row["class"]: row for row in report["class_metrics"]["per_class"]}
    assert set(table) == {r["true_label"] for r in rows}
    for name, row in table.items():  # recall and support, counted from the CSV by hand
        mine = [r for r in rows if r["true_label"] == name]
        assert row["support"] == len(mine)
        assert row["recall"] == pytest.approx(sum(r["predicted_label"] == name for r in mine) / len(mine))
    assert report["macro_f1"] == pytest.approx(np.mean([row["f1"] for row in table.values()]))
    assert report["cells"]["dropped"] == 1
    assert (predicted / "umap.png").read_bytes().startswith(b"\x89PNG")
    assert (predicted / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    page = (predicted / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and all(name in page for name in table)
    # the time the outputs took after the last chunk is said apart from inference (make bench reports it)
    durations = report["durations"]
    assert 0 < durations["outputs_seconds"] < durations["total_seconds"] - durations["inference_seconds"]


def test_finetune_report_has_validation_classes_and_every_step(finetuned):
    report = json.loads((finetuned / "report.json").read_text())
    metrics = report["class_metrics"]
    assert sum(row["support"] for row in metrics["per_class"]) == report["cells"]["validation"] == metrics["cells"]
    assert {row["class"] for row in metrics["per_class"]} <= set(report["labels"])
    assert metrics["accuracy"] == pytest.approx(report["accuracy"])
    steps = report["step_history"]
    assert len(steps["loss"]) == len(steps["lr"]) == report["steps"] > len(report["history"])
    assert max(steps["lr"]) == pytest.approx(report["config"]["lr"], rel=0.05)  # the warmup peak
    assert (finetuned / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    page = (finetuned / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "http://" not in page and "https://" not in page


def test_no_embeddings_leaves_them_and_the_umap_out(finetuned, users_file):
    out = finetuned / "predict-plain"
    result = run_cli("predict", "--model", str(finetuned / "model"), "--data", str(users_file), "--output", str(out),
                     "--no-embeddings")
    assert result.returncode == 0, result.stderr
    annotated = anndata.read_h5ad(out / "predictions.h5ad")
    assert "X_geneformer" not in annotated.obsm and annotated.n_obs == 300
    assert f"predicted_{LABEL}" in annotated.obs
    assert not (out / "umap.png").exists() and (out / "report.html").exists()
