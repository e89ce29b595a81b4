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
