"""Leiden clusters and a UMAP of the cell embeddings in embeddings.h5ad, added to the file in place.

All of it is scanpy's: `sc.pp.neighbors` (a 15-nearest-neighbour graph on the embeddings, pynndescent),
`sc.tl.leiden` (igraph's Leiden, scanpy's recommended flavor: 2 iterations, undirected) and `sc.tl.umap`
(umap-learn, scanpy's defaults). On more than `max_cells` cells they run on a seeded random sample of that
many cells; every other cell then gets the majority cluster and the mean UMAP position of its 15 nearest
sampled neighbours (scikit-learn's exact kNN; scanpy's own `ingest` fails with pynndescent 0.7), block by
block, so memory holds the sample and one block. The report says how many cells were clustered and placed.

Cells without an embedding (no gene in the model's vocabulary) get a missing cluster and NaN coordinates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from helical_runner.outputs.umap_plot import MIN_CELLS, READ_BLOCK, sample_embeddings

log = logging.getLogger(__name__)

CLUSTER_COLUMN = "leiden"
UMAP_KEY = "X_umap"
MAX_CELLS = 50_000  # clustered and laid out together; the rest are placed by nearest neighbours


def cluster_column(obs_columns) -> str:
    """'leiden', or 'leiden_embed' when the input's obs already has a 'leiden' column (kept as it was)."""
    return CLUSTER_COLUMN if CLUSTER_COLUMN not in set(map(str, obs_columns)) else f"{CLUSTER_COLUMN}_embed"


def cluster_and_umap(h5ad: Path, key: str, column: str = CLUSTER_COLUMN, max_cells: int = MAX_CELLS,
                     seed: int = 0) -> dict | None:
    """Add obs[column] (Leiden clusters, categorical '0', '1', ...) and obsm['X_umap'] [cells, 2] float32 to
    `h5ad`, computed from obsm[key]. Returns {column, clusters, clustered, placed, of, seconds} or None (and
    writes nothing) when fewer than MIN_CELLS cells have an embedding."""
    import anndata
    import scanpy as sc

    started = time.monotonic()
    with h5py.File(h5ad, "r") as f:
        total = f["obsm"][key].shape[0]
    rows, values = sample_embeddings(h5ad, max_cells, seed, key)
    if len(rows) < MIN_CELLS:
        log.info("clusters and UMAP skipped: %d cells with embeddings", len(rows))
        return None
    reference = anndata.AnnData(obs=pd.DataFrame(index=rows.astype(str)), obsm={key: values})
    sc.pp.neighbors(reference, n_neighbors=min(15, len(rows) - 1), use_rep=key, random_state=seed)
    sc.tl.leiden(reference, key_added=column, flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed)
    sc.tl.umap(reference, random_state=seed)
    categories = sorted(reference.obs[column].cat.categories, key=int)
    codes = np.full(total, -1, dtype=np.int32)
    layout = np.full((total, 2), np.nan, dtype=np.float32)
    codes[rows] = pd.Categorical(reference.obs[column], categories=categories).codes
    layout[rows] = reference.obsm[UMAP_KEY]
    placed = _place_the_rest(h5ad, key, values, rows, codes, layout)
    write_clusters(h5ad, column, pd.Categorical.from_codes(codes, categories=categories), layout)
    info = {"column": column, "clusters": len(categories), "clustered": int(len(rows)), "placed": placed, "of": int(total),
            "seconds": time.monotonic() - started}
    log.info("%d Leiden clusters on %d cells%s", len(categories), len(rows),
             f"; {placed} more placed by nearest neighbours" if placed else "")
    return info


def _place_the_rest(h5ad: Path, key: str, reference: np.ndarray, sampled: np.ndarray, codes: np.ndarray,
                    layout: np.ndarray) -> int:
    """Place every embedded cell outside `sampled` by its nearest sampled neighbours (module docstring),
    READ_BLOCK rows at a time; returns how many were placed."""
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    index = None
    neighbours = min(15, len(sampled))
    in_sample = np.zeros(len(codes), dtype=bool)
    in_sample[sampled] = True
    ref_codes, ref_layout = codes[sampled], layout[sampled]
    placed = 0
    with h5py.File(h5ad, "r") as f:
        embeddings = f["obsm"][key]
        for start in range(0, embeddings.shape[0], READ_BLOCK):
            block = embeddings[start:start + READ_BLOCK]
            rows = np.arange(start, start + len(block))
            todo = np.isfinite(block).all(axis=1) & ~in_sample[rows]
            if not todo.any():
                continue
            if index is None:
                index = NearestNeighbors(n_neighbors=neighbours).fit(reference)
            with sklearn.config_context(working_memory=64):  # MiB of distances at a time: bounded memory
                found = index.kneighbors(block[todo], return_distance=False)
            votes = ref_codes[found]  # [cells, k]
            counts = np.apply_along_axis(np.bincount, 1, votes, minlength=int(ref_codes.max()) + 1)
            codes[rows[todo]] = counts.argmax(axis=1)
            layout[rows[todo]] = ref_layout[found].mean(axis=1)
            placed += int(todo.sum())
    return placed


def copy_clusters(source, h5ad: Path) -> str | None:
    """Bring the embed step's clusters and UMAP from its embeddings.h5ad `source` (a path or a file object
    such as s3_file.S3File) into `h5ad`, which holds the same cells in the same order (both written from one
    chunk manifest): obs['leiden'] (or 'leiden_embed', whichever the embed step wrote) and obsm['X_umap'].
    Returns the column, or None when `source` has no clusters. Raises InputError when the cells differ."""
    from anndata.io import read_elem

    from helical_runner.errors import InputError

    with h5py.File(source, "r") as src, h5py.File(h5ad, "r") as dst:
        column = next((c for c in (f"{CLUSTER_COLUMN}_embed", CLUSTER_COLUMN) if c in src["obs"]), None)
        if column is None or UMAP_KEY not in src["obsm"]:
            return None
        index = src["obs"][src["obs"].attrs["_index"]][...]
        if not np.array_equal(index, dst["obs"][dst["obs"].attrs["_index"]][...]):
            raise InputError("--embeddings: its cells are not the predicted cells (another data set or order)")
        taken = column in dst["obs"]
        clusters, layout = read_elem(src["obs"][column]), src["obsm"][UMAP_KEY][...]
    column = f"{column}_embed" if taken else column
    write_clusters(h5ad, column, clusters, layout)
    return column


def write_clusters(h5ad: Path, column: str, clusters: pd.Categorical, layout: np.ndarray) -> None:
    """obs[column] and obsm['X_umap'] in anndata's encoding; the column joins obs's column order."""
    from anndata.io import write_elem

    with h5py.File(h5ad, "a") as f:
        obs = f["obs"]
        write_elem(obs, column, clusters)
        order = [str(c) for c in obs.attrs.get("column-order", [])]
        obs.attrs["column-order"] = np.array(order + [column], dtype=object)
        if UMAP_KEY in f["obsm"]:
            del f["obsm"][UMAP_KEY]
        write_elem(f["obsm"], UMAP_KEY, layout)
