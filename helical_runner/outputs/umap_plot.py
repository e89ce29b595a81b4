"""umap.png: a UMAP of the cell embeddings in predictions.h5ad, coloured by predicted and by true type.

At most `max_cells` cells (default 50,000) are drawn at random (seeded); the embeddings are read from the
file block by block, so memory holds the sample, not the dataset. The layout is umap-learn's, with the
parameters scanpy's `sc.tl.umap` uses by default (15 neighbours, min_dist 0.5).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from helical_runner.outputs.annotated import EMBEDDING_KEY, predicted_column

log = logging.getLogger(__name__)

UMAP_NAME = "umap.png"
MAX_CELLS = 50_000
READ_BLOCK = 65_536  # embedding rows read at a time
MIN_CELLS = 5  # fewer cells make no neighbourhood graph worth drawing


def labels(group, column: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """(codes of the sampled rows, categories) of an obs column, or None if it is absent."""
    from anndata.io import read_elem

    if column not in group:
        return None
    values = read_elem(group[column])
    if hasattr(values, "codes"):  # categorical: codes, -1 for missing
        return np.asarray(values.codes)[rows], [str(c) for c in values.categories]
    categories, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes[rows], [str(c) for c in categories]


def sample_embeddings(path: Path, max_cells: int = MAX_CELLS, seed: int = 0,
                      key: str = EMBEDDING_KEY) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, embeddings [rows, hidden]) of up to max_cells cells that have an embedding in obsm[key]."""
    with h5py.File(path, "r") as f:
        embeddings = f["obsm"][key]
        n = embeddings.shape[0]
        rng = np.random.default_rng(seed)
        wanted = np.sort(rng.choice(n, size=min(n, max_cells), replace=False))
        rows, parts = [], []
        for start in range(0, n, READ_BLOCK):
            inside = wanted[(wanted >= start) & (wanted < start + READ_BLOCK)]
            if len(inside):
                block = embeddings[start:min(start + READ_BLOCK, n)]
                parts.append(block[inside - start])
                rows.append(inside)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    values = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    ok = np.isfinite(values).all(axis=1) if len(values) else np.zeros(0, dtype=bool)  # unread cells are NaN
    return rows[ok], values[ok]


def plot_umap(h5ad: Path, label_column: str, out: Path, max_cells: int = MAX_CELLS, seed: int = 0) -> dict | None:
    """Draw umap.png from predictions.h5ad; returns {"cells": drawn, "of": total} or None when there are
    no embeddings or fewer than MIN_CELLS cells with one."""
    with h5py.File(h5ad, "r") as f:
        if EMBEDDING_KEY not in f.get("obsm", {}):
            return None
        total = f["obsm"][EMBEDDING_KEY].shape[0]
    rows, values = sample_embeddings(h5ad, max_cells, seed)
    if len(rows) < MIN_CELLS:
        log.info("UMAP skipped: %d cells with embeddings", len(rows))
        return None
    import umap

    # a seed makes umap-learn single-threaded anyway; n_jobs=1 says so (and silences its warning)
    reducer = umap.UMAP(n_neighbors=min(15, len(rows) - 1), min_dist=0.5, random_state=seed, n_jobs=1)
    layout = reducer.fit_transform(values)
    with h5py.File(h5ad, "r") as f:
        panels = [(f"predicted {label_column}", labels(f["obs"], predicted_column(label_column), rows)),
                  (f"true {label_column}", labels(f["obs"], label_column, rows))]
    panels = [(name, found) for name, found in panels if found is not None]
    draw(layout, panels, out, len(rows), total, "Geneformer")
    return {"cells": int(len(rows)), "of": int(total)}


def draw(layout: np.ndarray, panels, out: Path, drawn: int, total: int, model: str) -> None:
    """One scatter panel per (title, (codes [cells], categories)), a category's colour the same in every
    panel, code -1 grey; `model` names the embeddings in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 6), squeeze=False)
    size = max(1.0, min(20.0, 20_000 / len(layout)))
    names = list(dict.fromkeys(c for _, (_, categories) in panels for c in categories))
    cmap = plt.get_cmap("tab20" if len(names) <= 20 else "gist_ncar", max(len(names), 1))
    colour = {name: cmap(i) for i, name in enumerate(names)}  # a type has one colour in every panel
    for ax, (name, (codes, categories)) in zip(axes[0], panels):
        missing = codes < 0
        if missing.any():
            ax.scatter(*layout[missing].T, s=size, c="lightgrey", label="(none)", linewidths=0)
        for code, category in enumerate(categories):
            mine = codes == code
            if mine.any():
                ax.scatter(*layout[mine].T, s=size, color=colour[category], label=category, linewidths=0)
        ax.set(title=name, xlabel="UMAP 1", ylabel="UMAP 2", xticks=[], yticks=[])
        if len(categories) <= 30:
            ax.legend(markerscale=max(1.0, 20 / size), fontsize=8, loc="best", frameon=False)
    sample = f"{drawn:,} of {total:,} cells" if drawn < total else f"{drawn:,} cells"
    fig.suptitle(f"UMAP of {model} cell embeddings ({sample})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
