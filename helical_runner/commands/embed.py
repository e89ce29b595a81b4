"""`helical-runner embed`: cell embeddings from a pretrained model, no labels needed, streamed chunk by chunk.

Writes under the output prefix:
  embeddings.h5ad   every input cell's obs, obsm['X_<family>'] (the embeddings), obs['leiden'] (Leiden
                    clusters of a kNN graph on the embeddings; 'leiden_embed' when the input already has
                    a 'leiden' column) and obsm['X_umap']; no counts (annotated.py writes it chunk by chunk)
  umap.png          the UMAP coloured by cluster and by each --color column the data has
  report.json, report.html

The input is read with the same readers as finetune and predict (every layout `inspect` knows; S3 read in
place), so memory and scratch hold a chunk, not the file. Clusters and UMAP: clusters.py (scanpy).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from helical_runner.outputs import clusters, fencing, report_html
from helical_runner.outputs.publish import publish_report
from helical_runner.tracking import NoTracking

from helical_runner import models

from helical_runner.data import storage
from helical_runner.outputs.annotated import AnnotatedWriter, every_cell
from helical_runner.data.dataset import open_dataset, prefetched
from helical_runner.outputs.metrics import RunMetrics
from helical_runner.training.precision import resolve, select_device
from helical_runner.profiles import Profile
from helical_runner.outputs.report import upload_picture
from helical_runner.resources import peak_memory
from helical_runner.runs import versions
from helical_runner.outputs.umap_plot import UMAP_NAME, draw, labels

log = logging.getLogger(__name__)
EMBEDDINGS_H5AD = "embeddings.h5ad"


def embed(model_name: str, data_url: str, output_url: str, profile: Profile, run_id: str, scratch: Path,
          metrics: RunMetrics, counts: str | None = None, gene_column: str | None = None,
          colors: list[str] | None = None, max_cluster_cells: int = clusters.MAX_CELLS, tracking=None) -> dict:
    """Embed every cell of `data_url` with `model_name` and write the outputs above. InputError (one line)
    for an unknown model, a file the readers refuse or one with no gene in the model's vocabulary."""
    started = time.monotonic()
    output = storage.parse(output_url)
    family = models.family_of(model_name)  # an unknown name fails before anything is read or written
    fencing.hold(output, "embed")
    device = select_device(profile.device)
    precision = resolve(profile.precision, device)
    model = family.load(model_name, precision)
    dataset = open_dataset(data_url, scratch, profile.cells_per_chunk, profile.max_input_bytes, counts, gene_column,
                           max_cells=profile.max_cells)
    batch_size = profile.batch_size * 4  # no gradients: as predict
    try:
        genes = model.genes(dataset)
        metrics.update(chunks_total=dataset.n_chunks)
        n_embedded = n_dropped = 0
        inference_seconds = 0.0
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            writer = AnnotatedWriter(Path(tmp) / EMBEDDINGS_H5AD, None, [], model.hidden_size, model.obsm_key)
            loaders = [lambda i=i: (lambda chunk: (chunk.obs, model.tokenize(chunk)))(dataset.load(i))
                       for i in range(dataset.n_chunks)]
            column = None
            for done, (obs, tokens) in enumerate(prefetched(loaders), start=1):
                column = column or clusters.cluster_column(obs.columns)
                began = time.monotonic()
                kept_embeddings = model.embed(tokens, batch_size) if tokens.input_ids else \
                    np.zeros((0, model.hidden_size), dtype=np.float32)
                inference_seconds += time.monotonic() - began
                writer.append(obs, None, None, every_cell(tokens.kept, kept_embeddings))
                n_embedded += len(kept_embeddings)
                n_dropped += tokens.dropped_empty
                metrics.update(chunks_done=done, cells=n_embedded)
                log.info("embedded chunk %d/%d (%d cells so far)", done, dataset.n_chunks, n_embedded)
            writer.close()
            embedded_at = time.monotonic()
            clustered = clusters.cluster_and_umap(writer.path, model.obsm_key, column or clusters.CLUSTER_COLUMN,
                                                  max_cluster_cells)
            figures, drawn, missing_colors = {}, None, []
            if clustered:
                drawn, missing_colors = _plot(writer.path, clustered["column"], colors or [], Path(tmp) / UMAP_NAME,
                                              model.name)
                figures[UMAP_NAME] = upload_picture(Path(tmp) / UMAP_NAME, output)
            storage.upload(writer.path, output.join(EMBEDDINGS_H5AD))
    finally:
        dataset.close()
    report = {
        "status": "succeeded", "command": "embed", "run_id": run_id,
        "inputs": {"model": model.name, "data": {"url": data_url, "etag": dataset.etag, "size": dataset.size,
                                                  "cells": dataset.n_cells, "chunks": dataset.n_chunks}},
        "model": {"name": model.name, "family": model.family, "embedding_key": model.obsm_key,
                  "embedding_size": model.hidden_size},
        "profile": asdict(profile), "precision": precision.name, "device": str(device), "batch_size": batch_size,
        "data_layout": dataset.layout, "genes": genes,
        "cells": {"embedded": n_embedded, "dropped": n_dropped},
        "clusters": clustered, "umap": drawn, "colors_missing": missing_colors,
        "cells_per_second": n_embedded / inference_seconds if inference_seconds else None,
        # embedding_seconds: the model alone (what helical's get_embeddings does); clusters_seconds: neighbours,
        # Leiden and UMAP; the rest is reading, tokenizing and writing
        "durations": {"total_seconds": time.monotonic() - started, "embedding_seconds": inference_seconds,
                      "clusters_seconds": clustered["seconds"] if clustered else 0.0,
                      "outputs_seconds": time.monotonic() - embedded_at},
        "peak_memory": peak_memory(),
        "outputs": {"embeddings": str(output.join(EMBEDDINGS_H5AD)),
                    "pictures": [str(output.join(name)) for name in figures],
                    "report_html": str(output.join(report_html.HTML_NAME))},
        "versions": versions(),
    }
    publish_report(output, report, figures, tracking or NoTracking())
    log.info("embeddings of %d cells written to %s", n_embedded, output.join(EMBEDDINGS_H5AD))
    return report


def _plot(h5ad: Path, cluster_column: str, colors: list[str], out: Path, model: str) -> tuple[dict, list[str]]:
    """umap.png: the cells with a UMAP position (up to umap_plot.MAX_CELLS, seeded), one panel for the
    clusters and one per --color column; returns ({cells, of}, the --color columns the data lacks)."""
    import h5py

    from helical_runner.outputs.umap_plot import MAX_CELLS

    with h5py.File(h5ad, "r") as f:
        layout_all = f["obsm"][clusters.UMAP_KEY][...]
        placed = np.flatnonzero(np.isfinite(layout_all).all(axis=1))
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(placed, size=min(len(placed), MAX_CELLS), replace=False))
        panels = [(f"Leiden clusters ({cluster_column})", labels(f["obs"], cluster_column, rows))]
        missing = []
        for column in colors:
            found = labels(f["obs"], column, rows)
            if found is None:
                missing.append(column)
                log.warning("--color %s: no such obs column; left out of umap.png", column)
            else:
                panels.append((column, found))
    draw(layout_all[rows], panels, out, len(rows), len(layout_all), model)
    return {"cells": int(len(rows)), "of": int(len(layout_all))}, missing
