"""`helical-runner embed` (issue 22): unlabelled real files in, helical's own embeddings, Leiden clusters, a
UMAP, umap.png and a report out, from a local path and from S3; `info` lists every model."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from conftest import BUCKET, MODEL, real_file, run_cli

pytestmark = pytest.mark.slow
PERTURB = "cellxgene_schema7_perturb_500x2000.h5ad"  # CELLxGENE CRISPRi screen: no cell-type column
CHR21 = "scanpy_tests_10x_v3_chr21_1107x507.h5ad"  # scanpy's 10x v3 test matrix: symbols, Ensembl in var['gene_ids']


@pytest.fixture(scope="module")
def embedded(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "run"
    result = run_cli("embed", "--model", MODEL, "--data", str(real_file(PERTURB)), "--output", str(out),
                     "--precision", "fp32", "--cells-per-chunk", "200",
                     "--color", "genetic_perturbation_strategy", "no_such_column")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith("embed done: 500 cells embedded, ")
    return out


def test_embeddings_h5ad_holds_every_cell_its_obs_clusters_and_umap(embedded):
    source = anndata.read_h5ad(real_file(PERTURB))
    result = anndata.read_h5ad(embedded / "embeddings.h5ad")
    assert list(result.obs_names) == list(source.obs_names)
    assert result.X is None and result.n_vars == 0  # no copy of the counts
    for column in ("genetic_perturbation_strategy", "genetic_perturbation_id", "donor_id", "total_counts"):
        assert result.obs[column].astype(str).tolist() == source.obs[column].astype(str).tolist(), column
    embeddings = result.obsm["X_geneformer"]
    assert embeddings.shape == (500, 64) and embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    clusters = result.obs["leiden"]
    assert isinstance(clusters.dtype, pd.CategoricalDtype) and clusters.notna().all()
    assert 2 <= len(clusters.cat.categories) < 100
    assert result.obsm["X_umap"].shape == (500, 2) and np.isfinite(result.obsm["X_umap"]).all()


def test_embeddings_equal_helicals_get_embeddings_on_the_same_file(embedded):
    """helical's Geneformer, its own process_data + get_embeddings (cell mode, last layer), same model files."""
    from helical.models.geneformer import Geneformer, GeneformerConfig

    ours = anndata.read_h5ad(embedded / "embeddings.h5ad").obsm["X_geneformer"]
    adata = anndata.read_h5ad(real_file(PERTURB))
    adata.var["ensembl_id"] = adata.var_names
    helical = Geneformer(GeneformerConfig(model_name=MODEL, batch_size=32, device="cpu"))
    theirs = helical.get_embeddings(helical.process_data(adata, gene_names="ensembl_id"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_report_umap_png_and_html_say_what_was_done(embedded):
    report = json.loads((embedded / "report.json").read_text())
    assert report["command"] == "embed" and report["status"] == "succeeded"
    assert report["model"] == {"name": MODEL, "family": "geneformer", "embedding_key": "X_geneformer",
                               "embedding_size": 64}
    assert report["cells"] == {"embedded": 500, "dropped": 0}
    assert report["genes"]["in_file"] == 2000 and 0 < report["genes"]["in_vocabulary"] <= 2000
    clusters = report["clusters"]
    assert clusters["column"] == "leiden" and clusters["clustered"] == 500 and clusters["placed"] == 0
    assert report["colors_missing"] == ["no_such_column"]
    assert report["durations"]["embedding_seconds"] > 0 and report["cells_per_second"] > 0
    assert (embedded / "umap.png").read_bytes().startswith(b"\x89PNG")
    html = (embedded / "report.html").read_text()
    assert "Leiden clusters" in html and "data:image/png;base64," in html and "Confusion matrix" not in html


def test_embed_from_s3_places_cells_beyond_the_clustering_sample(s3, tiny_model, tmp_path):
    """scanpy's 10x matrix read in place from S3, gene ids from var['gene_ids']; 300 cells clustered and the
    other 807 placed by their nearest neighbours: every cell has a cluster and a UMAP position."""
    s3.upload_file(str(real_file(CHR21)), BUCKET, "incoming/chr21.h5ad")
    result = run_cli("embed", "--data", f"s3://{BUCKET}/incoming/chr21.h5ad", "--output", f"s3://{BUCKET}/embed/chr21",
                     "--gene-column", "gene_ids", "--max-cluster-cells", "300", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    s3.download_file(BUCKET, "embed/chr21/embeddings.h5ad", str(tmp_path / "e.h5ad"))
    adata = anndata.read_h5ad(tmp_path / "e.h5ad")
    assert adata.n_obs == 1107 and adata.obs["leiden"].notna().all()
    assert np.isfinite(adata.obsm["X_umap"]).all()
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="embed/chr21/report.json")["Body"].read())
    assert report["clusters"]["clustered"] == 300 and report["clusters"]["placed"] == 807
    assert report["data_layout"]["gene_source"] == "var['gene_ids']"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="embed/chr21/")["Contents"]}
    assert {"embed/chr21/umap.png", "embed/chr21/report.html"} <= keys


def test_a_users_leiden_column_is_kept_and_ours_named_apart(tiny_model, cells_h5ad, tmp_path):
    adata = anndata.read_h5ad(cells_h5ad)[:120].copy()
    adata.obs["leiden"] = pd.Categorical(["mine"] * adata.n_obs)
    adata.write_h5ad(tmp_path / "clustered.h5ad")
    result = run_cli("embed", "--data", str(tmp_path / "clustered.h5ad"), "--output", str(tmp_path / "out"),
                     "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    out = anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad")
    assert (out.obs["leiden"] == "mine").all() and out.obs["leiden_embed"].notna().all()


def test_an_unknown_model_is_one_line_listing_the_models(tiny_model, cells_h5ad, tmp_path):
    result = run_cli("embed", "--model", "scgpt-large", "--data", str(cells_h5ad), "--output", str(tmp_path / "out"))
    assert result.returncode == 65
    [line] = [l for l in result.stderr.splitlines() if l.startswith("helical-runner: error:")]
    assert "unknown model 'scgpt-large'" in line and MODEL in line and "gf-6L-10M-i2048" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["error.json"]


def test_info_without_a_model_lists_every_model_and_its_cache_state(tiny_model):
    result = run_cli("info")
    assert result.returncode == 0, result.stderr[-2000:]
    listing = json.loads(result.stdout)
    rows = {row["name"]: row for row in listing["models"]}
    assert sum(row["family"] == "geneformer" for row in rows.values()) == 9 and "scGPT_CP" in rows
    assert rows[MODEL]["cached"] and rows[MODEL]["missing"] == [] and rows[MODEL]["embedding_size"] == 64
    other = rows["gf-6L-10M-i2048"]  # not in this cache: which files, and where
    assert not other["cached"] and any(p.endswith("/v1/gf-6L-10M-i2048/pytorch_model.bin") for p in other["missing"])
    assert other["embedding_size"] == 256 and other["input_size"] == 2048 and other["fine_tunes"]
    assert "uce" in {row["family"] for row in listing["not_supported"]}


def test_the_dags_model_list_is_the_runners():
    """The forms' model fields (dags/helical_lib/models.py, no helical on the DAG side) offer exactly the
    models the runner runs, with the same families and fine-tuning ability."""
    import importlib.util

    from conftest import REPO_ROOT
    from helical_runner import models

    spec = importlib.util.spec_from_file_location("dag_models", REPO_ROOT / "dags" / "helical_lib" / "models.py")
    dag_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_models)
    assert dag_models.MODELS == {row.name: (row.family, row.fine_tunes) for row in models.catalogue()}
