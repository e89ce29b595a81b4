"""`helical-runner chunk`: split an .h5ad into row-chunk .h5ad objects plus a manifest.

The manifest is written last and is the commit point: a prefix with chunks but no manifest is an
interrupted run, and a failed run deletes the chunks it wrote. Rerunning on the same source (same ETag)
finds the manifest and does nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import anndata

from helical_runner.data import storage
from helical_runner.data.dataset import MANIFEST_FORMAT, MANIFEST_NAME, open_dataset
from helical_runner.errors import InputError
from helical_runner.resources import peak_rss_bytes
from helical_runner.runs import read_json_if_present
from helical_runner.data.storage import Location

log = logging.getLogger(__name__)


def existing_manifest(output: Location) -> dict | None:
    return read_json_if_present(output.join(MANIFEST_NAME))


def chunk(input_url: str, output_url: str, cells_per_chunk: int, scratch: Path,
          max_input_bytes: str | None = None, progress=None, counts: str | None = None,
          gene_column: str | None = None, max_cells: int | None = None) -> dict:
    if cells_per_chunk < 1:
        raise InputError(f"--cells-per-chunk must be at least 1, got {cells_per_chunk}")
    output = storage.parse(output_url)
    source = storage.stat(storage.parse(input_url))
    previous = existing_manifest(output)
    if previous is not None:
        if previous.get("source", {}).get("etag") == source.etag:
            log.info("%s already holds the chunks of this input (ETag %s): nothing to do", output, source.etag)
            return previous
        raise InputError(f"{output} already holds chunks of another input ({previous['source']['url']}); "
                         "choose a new output prefix")

    started = time.monotonic()
    dataset = open_dataset(input_url, scratch, cells_per_chunk, max_input_bytes, counts, gene_column,
                           max_cells=max_cells)
    if dataset.url.endswith(".json"):
        dataset.close()
        raise InputError(f"{input_url} is already a chunk manifest")
    written: list[Location] = []
    entries = []
    try:
        var = None
        for i in range(dataset.n_chunks):
            part = dataset.load(i)
            if var is None:
                var = _var_frame(dataset, part)
            key = f"chunk-{i:05d}.h5ad"
            with tempfile.TemporaryDirectory(dir=scratch) as tmp:
                local = Path(tmp) / key
                anndata.AnnData(X=part.X, obs=part.obs, var=var).write_h5ad(local)
                storage.upload(local, output.join(key))
                written.append(output.join(key))
                entries.append({"key": key, "n_cells": int(part.X.shape[0]), "bytes": local.stat().st_size})
            if progress:
                progress(chunks_done=i + 1, chunks_total=dataset.n_chunks,
                         cells=sum(e["n_cells"] for e in entries))
            log.info("chunk %d/%d written: %s (%d cells)", i + 1, dataset.n_chunks, key, part.X.shape[0])
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": {"url": input_url, "etag": source.etag, "size": source.size},
            "n_cells": dataset.n_cells,
            "n_genes": len(dataset.genes),
            "cells_per_chunk": cells_per_chunk,
            "chunks": entries,
            "obs_columns": list(dataset.obs_value_counts),
            "obs_value_counts": dataset.obs_value_counts,
            "obs_missing": dataset.obs_missing,
            "layout": dataset.layout,  # where the counts and gene ids were found (h5ad_layout)
            "genes": dataset.genes,
            "gene_ids": [str(g) for g in var["ensembl_id"]],
            "duration_seconds": round(time.monotonic() - started, 3),
            "peak_rss_bytes": peak_rss_bytes(),
        }
        storage.put_bytes(output.join(MANIFEST_NAME), json.dumps(manifest, indent=1).encode(), "application/json")
    except BaseException:
        for loc in written:  # our own partial output, never the input
            try:
                storage.delete(loc)
            except Exception:  # noqa: BLE001 - best effort; the original error matters more
                log.warning("could not remove partial chunk %s", loc)
        raise
    finally:
        dataset.close()
    log.info("%d cells in %d chunks written to %s in %.1fs", dataset.n_cells, len(entries), output,
             manifest["duration_seconds"])
    return manifest


def _var_frame(dataset, part):
    import pandas as pd

    var = pd.DataFrame(index=pd.Index(dataset.genes, name=None))
    var["ensembl_id"] = part.gene_ids
    return var
