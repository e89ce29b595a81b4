"""predictions.h5ad's writer on its own: chunks appended, categories that grow, anndata reads it back."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

from helical_runner.outputs.annotated import AnnotatedWriter


def _chunk(start: int, n: int, donors: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"donor": pd.Categorical([donors[i % len(donors)] for i in range(n)], categories=donors),
                         "n_counts": np.arange(start, start + n, dtype=np.float32)},
                        index=[f"AAACCTG-{start + i}" for i in range(n)])


def test_chunks_append_into_one_anndata_with_growing_categories(tmp_path):
    classes = ["B cell", "T cell"]
    writer = AnnotatedWriter(tmp_path / "p.h5ad", "cell_type", classes, embedding_dim=3)
    first = [f"donor-{i}" for i in range(3)]
    later = [f"donor-{i}" for i in range(2, 200)]  # 200 categories in all: more than int8 codes hold
    rng = np.random.default_rng(0)
    chunks = [(_chunk(0, 4, first), np.array([0, 1, -1, 1])), (_chunk(4, 250, later), rng.integers(0, 2, 250))]
    embeddings = []
    for obs, predicted in chunks:
        emb = rng.normal(size=(len(obs), 3)).astype(np.float32)
        embeddings.append(emb)
        writer.append(obs, predicted, np.full(len(obs), 0.9, dtype=np.float32), emb)
    assert writer.close() == 254

    result = anndata.read_h5ad(tmp_path / "p.h5ad")
    expected = pd.concat([c[0] for c in chunks])
    assert list(result.obs_names) == list(expected.index)
    assert result.obs["donor"].astype(str).tolist() == expected["donor"].astype(str).tolist()
    assert result.obs["n_counts"].tolist() == expected["n_counts"].tolist()
    assert list(result.obs["predicted_cell_type"].cat.categories) == classes
    assert pd.isna(result.obs["predicted_cell_type"].iloc[2])
    assert result.obs["predicted_cell_type"].iloc[3] == "T cell"
    np.testing.assert_array_equal(result.obsm["X_geneformer"], np.concatenate(embeddings))


def test_embed_clusters_and_umap_join_the_predictions_of_the_same_cells(tmp_path):
    """helical_annotate's predict step brings the embed step's Leiden clusters and UMAP into
    predictions.h5ad (predict --embeddings): same cells, same order, read back by anndata."""
    from helical_runner.errors import InputError
    from helical_runner.outputs.clusters import copy_clusters

    cells = [f"cell-{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    leiden = pd.Categorical(rng.choice(["0", "1", "2"], 40), categories=["0", "1", "2"])
    umap = rng.normal(size=(40, 2)).astype(np.float32)
    anndata.AnnData(obs=pd.DataFrame({"donor": ["a"] * 40, "leiden": leiden}, index=cells),
                    obsm={"X_umap": umap}).write_h5ad(tmp_path / "embeddings.h5ad")
    predictions = tmp_path / "predictions.h5ad"
    anndata.AnnData(obs=pd.DataFrame({"donor": ["a"] * 40, "predicted_cell_type": ["T"] * 40},
                                     index=cells)).write_h5ad(predictions)

    assert copy_clusters(tmp_path / "embeddings.h5ad", predictions) == "leiden"
    joined = anndata.read_h5ad(predictions)
    assert list(joined.obs.columns) == ["donor", "predicted_cell_type", "leiden"]
    assert joined.obs["leiden"].tolist() == list(leiden) and np.array_equal(joined.obsm["X_umap"], umap)

    other = tmp_path / "other.h5ad"
    anndata.AnnData(obs=pd.DataFrame(index=cells[::-1])).write_h5ad(other)
    try:
        copy_clusters(tmp_path / "embeddings.h5ad", other)
    except InputError as exc:
        assert str(exc) == "--embeddings: its cells are not the predicted cells (another data set or order)"
    else:
        raise AssertionError("cells in another order were joined")
