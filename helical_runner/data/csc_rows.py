"""Row ranges of a CSC matrix on disk, through one out-of-core regrouping pass.

CSC keeps each gene's cells together, so any range of cells touches every column: reading chunks of cells
straight from it would read the whole matrix once per chunk. Instead the first read makes one pass over the
columns, BLOCK_NNZ stored values at a time, and appends each value (row, column, count) to the scratch file
of its bucket of BUCKET_ROWS rows; a row range is then read from the buckets it overlaps.

What it needs: memory for one column block (BLOCK_NNZ values, about 60 MB) and one chunk, whatever the
file size; scratch disk for every stored value once, (4 + 4 + itemsize) bytes each: 12 bytes a value for
float32 counts, about the size of the matrix's data and indices uncompressed (4.8 GB for 400 million
values), in a folder under $HELICAL_SCRATCH (the runner's scratch root) removed when the file is closed.
Files written by anndata keep each column's row indices sorted; within a bucket values stay in column order.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from helical_runner.errors import DiskFullError, InputError, size_text
from helical_runner.runs import scratch_root

log = logging.getLogger(__name__)

BUCKET_ROWS = 1024  # rows per scratch bucket: a chunk reads its own buckets and at most two partial ones
BLOCK_NNZ = 2_000_000  # stored values read per step of the regrouping pass
SAMPLE_COLUMNS = 64  # columns per window when only a sample is needed (judging what a matrix holds)


def scratch_needed(node: h5py.Group) -> int:
    """Bytes of scratch the regrouping writes for the CSC matrix `node`: a (row, column, count) record per
    stored value, 4 + 4 + the counts' itemsize."""
    return int(node["data"].shape[0]) * (8 + node["data"].dtype.itemsize)


class CscRows:
    """Rows of the CSC matrix `node` (an h5py group with data/indices/indptr) of `shape`, as CSR."""

    def __init__(self, node: h5py.Group, shape: tuple[int, int], name: str, place: str,
                 bucket_rows: int = BUCKET_ROWS, block_nnz: int = BLOCK_NNZ):
        self._node, self.shape, self.name, self.place = node, shape, name, place
        self.bucket_rows, self.block_nnz = bucket_rows, block_nnz
        self._records = np.dtype([("row", "<i4"), ("col", "<i4"), ("value", node["data"].dtype)])
        self._dir: Path | None = None
        self.scratch_bytes = 0

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        if self._dir is None:
            self._regroup()
        parts = []
        for bucket in range(start // self.bucket_rows, (max(stop, start + 1) - 1) // self.bucket_rows + 1):
            path = self._dir / f"{bucket:07d}"
            if not path.exists():
                continue
            records = np.fromfile(path, dtype=self._records)
            rows = records["row"].astype(np.int64) + bucket * self.bucket_rows
            keep = (rows >= start) & (rows < stop)
            parts.append((rows[keep] - start, records["col"][keep], records["value"][keep]))
        if not parts:
            return sp.csr_matrix((stop - start, self.shape[1]), dtype=self._records["value"])
        rows, cols, values = (np.concatenate(p) for p in zip(*parts))
        return sp.csr_matrix((values, (rows, cols)), shape=(stop - start, self.shape[1]))

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _regroup(self) -> None:
        started = time.monotonic()
        root = scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="helical-csc-", dir=root))
        weakref.finalize(self, shutil.rmtree, folder, True)  # also on paths that never call close()
        n_rows, n_cols = self.shape
        indptr = self._node["indptr"][:].astype(np.int64)
        data, indices = self._node["data"], self._node["indices"]
        if len(indptr) != n_cols + 1:
            raise InputError(f"{self.name}: {self.place} is CSC with {len(indptr) - 1} columns in indptr but "
                             f"{n_cols} in its shape")
        needed, free = scratch_needed(self._node), shutil.disk_usage(folder).free
        if needed > free:
            shutil.rmtree(folder, ignore_errors=True)
            raise DiskFullError(
                f"{self.name}: {self.place} is stored by genes (CSC); reading it by cells needs {size_text(needed)} "
                f"of scratch in {folder.parent}, which has {size_text(free)} free: point HELICAL_SCRATCH at a "
                "larger disk, or store the matrix by cells once (CSR: scipy's .tocsr() before write_h5ad)")
        log.info("%s: %s is CSC; regrouping its %d values by rows on scratch (%s; needs %s of %s free), once",
                 self.name, self.place, int(indptr[-1]), folder, size_text(needed), size_text(free))
        col = 0
        while col < n_cols:
            end = int(np.searchsorted(indptr, indptr[col] + self.block_nnz, side="right")) - 1
            end = min(max(end, col + 1), n_cols)  # a column larger than the block goes alone
            lo, hi = int(indptr[col]), int(indptr[end])
            if hi > lo:
                self._append(folder, indices[lo:hi].astype(np.int64), data[lo:hi],
                             np.repeat(np.arange(col, end, dtype=np.int32), np.diff(indptr[col:end + 1])))
            col = end
        self._dir = folder
        log.info("%s: %s regrouped in %.1f s, %s of scratch", self.name, self.place,
                 time.monotonic() - started, size_text(self.scratch_bytes))

    def _append(self, folder: Path, rows: np.ndarray, values: np.ndarray, cols: np.ndarray) -> None:
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise InputError(f"{self.name} is corrupt: {self.place} has row indices outside 0-{self.shape[0] - 1}")
        bucket = rows // self.bucket_rows
        order = np.argsort(bucket, kind="stable")  # stable: values keep their column order within a bucket
        bucket = bucket[order]
        records = np.empty(len(rows), dtype=self._records)
        records["row"] = rows[order] - bucket * self.bucket_rows
        records["col"] = cols[order]
        records["value"] = values[order]
        present = np.unique(bucket)
        bounds = np.searchsorted(bucket, np.append(present, present[-1] + 1))
        for i, b in enumerate(present):
            with open(folder / f"{int(b):07d}", "ab") as handle:
                handle.write(records[bounds[i]:bounds[i + 1]].tobytes())
        self.scratch_bytes += records.nbytes


def csc_sample(node: h5py.Group, shape: tuple[int, int], columns: int = SAMPLE_COLUMNS) -> tuple[sp.csr_matrix, np.ndarray]:
    """A few windows of columns (start, middle, end) of a CSC matrix, without the regrouping pass: a CSR
    matrix of the rows they touch, and those rows' numbers. Enough to judge what the matrix holds."""
    n_cols = shape[1]
    indptr = node["indptr"]
    rows, cols, values = [], [], []
    done = 0  # windows may overlap on narrow matrices: each column is read once
    for s in sorted({0, max(0, n_cols // 2 - columns // 2), max(0, n_cols - columns)}):
        s, stop = max(s, done), min(n_cols, s + columns)
        if s >= stop:
            continue
        done = stop
        bounds = indptr[s:stop + 1].astype(np.int64)
        lo, hi = int(bounds[0]), int(min(bounds[-1], bounds[0] + BLOCK_NNZ // 4))
        rows.append(node["indices"][lo:hi].astype(np.int64))
        values.append(node["data"][lo:hi])
        cols.append(np.repeat(np.arange(s, stop, dtype=np.int64), np.diff(np.minimum(bounds, hi)))[:hi - lo])
    rows, cols, values = np.concatenate(rows), np.concatenate(cols), np.concatenate(values)
    touched, row_of = np.unique(rows, return_inverse=True)
    return sp.csr_matrix((values, (row_of, cols)), shape=(len(touched), n_cols)), touched
