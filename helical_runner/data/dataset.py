"""A dataset as a sequence of row chunks: either a chunk manifest written by `chunk`, or a plain .h5ad.

Both give the same `Dataset`: its size, genes and obs summary up front (so the classifier knows every
label before training starts), and `load(i)` to read chunk i. `prefetched()` runs the next loads on a
background thread so the download of chunk i+1 overlaps the work on chunk i.

An .h5ad on S3 is read in place (s3_file.S3File: ranged GETs, nothing on scratch); HELICAL_S3_INPUT=download
copies it to scratch first instead, the behaviour before issue 15. Local files are always read in place.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from helical_runner.data import storage
from helical_runner.errors import InputError
from helical_runner.data.h5ad_io import H5adRows, check_counts
from helical_runner.profiles import parse_size
from helical_runner.data.s3_file import S3File
from helical_runner.data.storage import Location

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_FORMAT = "helical-runner/chunks/v1"
MANIFEST_NAME = "manifest.json"
OBS_BLOCK_ROWS = 20_000  # obs rows summarised at a time (a few MB whatever the file's cell count)
MAX_SUMMARISED_VALUES = 1000  # obs columns with more distinct values (ids, counts) get no value counts


@dataclass
class Chunk:
    """One chunk in memory: raw counts, its cells' metadata, and the dataset's gene ids."""

    index: int
    X: sp.csr_matrix
    obs: pd.DataFrame
    gene_ids: np.ndarray


@dataclass
class Dataset:
    url: str
    etag: str
    size: int
    n_cells: int
    chunk_sizes: list[int]
    genes: list[str]  # as in var (index)
    gene_ids: np.ndarray  # gene ids the tokenizer looks up (Ensembl ids, or symbols it maps)
    obs_value_counts: dict[str, dict[str, int]]
    obs_missing: dict[str, int]  # per summarised obs column: cells without a value (unlabelled)
    layout: dict  # where counts and gene ids were found (h5ad_layout.Layout.summary())
    _load: Callable[[int], Chunk] = field(repr=False)
    _close: Callable[[], None] = field(repr=False, default=lambda: None)
    source: str = ""  # the user's .h5ad when url is its chunk manifest: what error messages name

    @property
    def name(self) -> str:
        return self.source or self.url

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_sizes)

    def label_counts(self, column: str) -> dict[str, int]:
        if column not in self.obs_value_counts:
            available = ", ".join(sorted(self.obs_value_counts)) or "none"
            raise InputError(f"{self.name}: no obs column '{column}' usable as labels (categorical obs columns: {available})")
        return self.obs_value_counts[column]

    def load(self, index: int) -> Chunk:
        return self._load(index)

    def close(self) -> None:
        self._close()


def label_values(values: pd.Series) -> pd.Series:
    """obs values as label strings, missing ones (NaN, None, pandas NA) as None: unlabelled, never a class.

    Numbers keep their spelling ("3", not "3.0", for integer labels stored as floats because of a NaN)."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values.to_numpy()[~missing], 1) == 0):
        values = values.astype("Int64")
    text = values.astype(object).map(str)
    text[missing] = None
    return text


def summarise_obs(obs: pd.DataFrame) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Value counts of each obs column with few distinct values (the candidate label columns), and how many
    cells each leaves unlabelled (missing values). Unused categories are not counted: they are no class."""
    return summarise_obs_blocks([obs])


def summarise_obs_blocks(blocks: Iterable[pd.DataFrame]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """summarise_obs of the rows of all blocks together, holding one block at a time: counts are summed, and a
    column is left out as soon as one block shows it is a measurement or it passes MAX_SUMMARISED_VALUES."""
    counts: dict[str, dict[str, int]] = {}
    missing: dict[str, int] = {}
    dropped: set[str] = set()
    for obs in blocks:
        for column in obs.columns:
            key = str(column)
            if key in dropped:
                continue
            values = obs[column]
            if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.dropna().to_numpy(), 1) == 0):
                dropped.add(key)  # measurements (n_counts, percent_mito), not labels
                continue
            labels = label_values(values)
            seen = counts.setdefault(key, {})
            for value, n in labels.value_counts(dropna=True).items():
                if n > 0:
                    seen[str(value)] = seen.get(str(value), 0) + int(n)
            missing[key] = missing.get(key, 0) + int(labels.isna().sum())
            if len(seen) > MAX_SUMMARISED_VALUES:
                dropped.add(key)
    summary = {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in counts.items() if k not in dropped}
    return summary, {k: v for k, v in missing.items() if k in summary}


def open_dataset(url: str, scratch: Path, cells_per_chunk: int, max_input_bytes: str | int | None = None,
                 counts: str | None = None, gene_column: str | None = None,
                 prefer_gene_column: str | None = None, max_cells: int | None = None) -> Dataset:
    """A manifest or .h5ad as a Dataset; `counts`/`gene_column` force h5ad_layout's choices (.h5ad only),
    `prefer_gene_column` is tried first, `max_cells` caps the cells an .h5ad may declare (see H5adRows,
    which refuses a file that reaches outside itself before reading it)."""
    loc = storage.parse(url)
    info = storage.stat(loc)
    if max_input_bytes is not None and info.size > parse_size(max_input_bytes):
        raise InputError(f"{loc} is {info.size / 1e9:.2f} GB, over the profile's cap of {max_input_bytes}; "
                         "use a larger profile or split the file")
    if loc.name.endswith(".json"):
        return _open_manifest(loc, info, scratch)
    return _open_h5ad(loc, info, scratch, cells_per_chunk, counts, gene_column, prefer_gene_column, max_cells)


def _open_h5ad(loc: Location, info: storage.ObjectInfo, scratch: Path, cells_per_chunk: int,
               counts: str | None, gene_column: str | None, prefer_gene_column: str | None,
               max_cells: int | None) -> Dataset:
    remote = None
    if loc.is_s3 and os.environ.get("HELICAL_S3_INPUT", "ranged") != "download":
        source = remote = S3File(loc, info)  # read in place by ranged GETs: no copy on scratch
    else:
        source = local = storage.download(loc, scratch / f"input-{info.etag}.h5ad")
    try:
        rows = H5adRows(source, str(loc), counts, gene_column, prefer_gene_column, max_cells)
    except BaseException:
        if remote is None and local != loc.path:
            local.unlink(missing_ok=True)
        raise
    ids = rows.gene_ids
    place = rows.layout.counts
    log.info("%s: counts from %s (%s), gene ids from %s (%s)", loc, place, rows.layout.counts_encoding,
             rows.layout.gene_source, rows.layout.gene_kind)
    starts = list(range(0, rows.n_obs, cells_per_chunk))
    value_counts, missing = summarise_obs_blocks(rows.obs.blocks(OBS_BLOCK_ROWS))

    def load(i: int) -> Chunk:
        part = rows.rows(starts[i], min(starts[i] + cells_per_chunk, rows.n_obs))
        check_counts(part.X, part.obs, str(loc), place)
        return Chunk(index=i, X=part.X, obs=part.obs, gene_ids=ids)

    def close() -> None:
        rows.close()
        if remote is not None:
            log.info("%s read in place: %d ranged GETs, %.1f MB of %.1f MB", loc, remote.requests,
                     remote.bytes_fetched / 1e6, remote.size / 1e6)
            remote.close()
        elif local != loc.path:  # a downloaded copy, not the user's own file
            local.unlink(missing_ok=True)

    return Dataset(url=str(loc), etag=info.etag, size=info.size, n_cells=rows.n_obs,
                   chunk_sizes=[min(cells_per_chunk, rows.n_obs - s) for s in starts],
                   genes=rows.var_names, gene_ids=ids, obs_value_counts=value_counts, obs_missing=missing,
                   layout=rows.layout.summary(), _load=load, _close=close)


def _open_manifest(loc: Location, info: storage.ObjectInfo, scratch: Path) -> Dataset:
    try:
        manifest = json.loads(storage.get_bytes(loc))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{loc} is not a JSON chunk manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{loc} is not a chunk manifest (format '{MANIFEST_FORMAT}')")
    base = Location(loc.url.rsplit("/", 1)[0])
    chunks = manifest["chunks"]
    ids = np.asarray(manifest["gene_ids"])

    def load(i: int) -> Chunk:
        chunk_loc = base.join(chunks[i]["key"])
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            local = storage.download(chunk_loc, Path(tmp) / "chunk.h5ad")
            with H5adRows(local, str(chunk_loc)) as rows:
                part = rows.rows(0, rows.n_obs)
        return Chunk(index=i, X=part.X, obs=part.obs, gene_ids=ids)

    return Dataset(url=str(loc), etag=info.etag, size=manifest["source"]["size"], n_cells=manifest["n_cells"],
                   chunk_sizes=[c["n_cells"] for c in chunks], genes=manifest["genes"], gene_ids=ids,
                   obs_value_counts=manifest["obs_value_counts"],
                   obs_missing=manifest.get("obs_missing", {}), layout=manifest.get("layout", {}), _load=load,
                   source=str(manifest["source"].get("url") or ""))


def prefetched(loaders: Sequence[Callable[[], T]], depth: int = 1) -> Iterator[T]:
    """Results of the loaders in order, each started `depth` items ahead on a background thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending: list[Future] = [pool.submit(f) for f in loaders[:depth]]
        for i in range(len(loaders)):
            if i + depth < len(loaders):
                pending.append(pool.submit(loaders[i + depth]))
            yield pending.pop(0).result()


class HeadStart:
    """One load started now, on its own thread, for a loop that will ask for it later (finetune reads and
    tokenizes its first chunk while the model loads). `serve(load)` is `load` that hands over the early
    result when the first index asked for is the one started, and otherwise drops it (a resumed run may
    begin elsewhere). An error of the early load is raised where the loop asks for that index."""

    def __init__(self, load: Callable[[int], T], index: int):
        self.index = index
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="head-start")
        self._future: Future | None = self._pool.submit(load, index)
        self._pool.shutdown(wait=False)  # the thread ends with its one task

    def serve(self, load: Callable[[int], T]) -> Callable[[int], T]:
        def served(i: int) -> T:
            future, self._future = self._future, None  # only the loop's first request can use it
            if future is not None and i == self.index:
                return future.result()
            if future is not None:
                log.info("first chunk is %d, not the early-read %d (a resumed run): reading it now", i, self.index)
            return load(i)

        return served
