"""Row slices of an .h5ad file without loading it whole, and the checks every slice must pass.

Opens the file with h5py (a path, or a file object such as s3_file.S3File); every command opens its .h5ad
here. Before anything in it is read, `h5ad_safety.check_h5ad` refuses a file that reaches outside itself or
declares more cells or bytes than it holds. `h5ad_layout.find_layout` decides where the raw counts (X,
raw/X or a layer) and the gene ids are, and reads var (small). The counts and obs stay in the file and are
read a row range at a time (obs_rows), so memory follows the chunk size, not the file size.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helical_runner.errors import InputError
from helical_runner.data.h5ad_layout import ENSEMBL_ID, _reason, find_layout, judge_counts, read_frame
from helical_runner.data.h5ad_safety import check_h5ad
from helical_runner.data.obs_rows import ObsRows

__all__ = ["ENSEMBL_ID", "H5adRows", "RowSlice", "check_counts"]


@dataclass
class RowSlice:
    X: sp.csr_matrix
    obs: pd.DataFrame
    start: int


class H5adRows:
    """An open .h5ad whose counts can be read a row range at a time. Use as a context manager.

    `counts` and `gene_column` force the choices (`--counts`, `--gene-column`), `prefer_gene_column` is looked
    at first when present (a model's training column); `layout` says what was chosen. `max_cells` is the
    profile's cap on the cells a file may declare (None: only the file's size bounds them).
    """

    def __init__(self, path: Path | io.RawIOBase, name: str, counts: str | None = None,
                 gene_column: str | None = None, prefer_gene_column: str | None = None,
                 max_cells: int | None = None):
        self.name = name  # what error messages call the file (its URL)
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise InputError(f"{name} is not a readable .h5ad (HDF5) file: {_reason(exc)}") from None
        try:
            check_h5ad(self._file, name, _size_of(path), max_cells)  # before any obs/var/X value is read
            missing = [k for k in ("obs", "var") if k not in self._file]
            if missing:
                raise InputError(f"{name} is HDF5 but not an AnnData .h5ad: no {'/'.join(missing)}")
            self.obs = ObsRows(self._file["obs"], f"{name}: obs")  # read a chunk's rows at a time
            var = read_frame(self._file["var"], f"{name}: var")
            if len(self.obs) == 0:
                raise InputError(f"{name} has zero cells")
            if len(var) == 0:
                raise InputError(f"{name} has zero genes")
            self.layout, self._counts = find_layout(self._file, self.obs.names, var, name, counts, gene_column,
                                                      prefer_gene_column)
        except InputError:
            self.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            self.close()
            raise InputError(f"{name} is truncated or corrupt: {_reason(exc)}") from None

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def var_names(self) -> list[str]:
        return self.layout.var_names

    @property
    def gene_ids(self) -> np.ndarray:
        return np.asarray(self.layout.gene_ids, dtype=object)

    def rows(self, start: int, stop: int) -> RowSlice:
        return RowSlice(X=self._counts.rows(start, stop), obs=self.obs.frame(start, stop), start=start)

    def close(self) -> None:
        if getattr(self, "_counts", None) is not None:
            self._counts.close()
        self._file.close()

    def __enter__(self) -> "H5adRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _size_of(source: Path | io.RawIOBase) -> int:
    """Bytes in a path or a seekable file object (S3File knows its size from the object's HEAD)."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source)
    if isinstance(getattr(source, "size", None), int):
        return source.size
    position = source.tell()
    try:
        return source.seek(0, io.SEEK_END)
    finally:
        source.seek(position)


def check_counts(X: sp.csr_matrix, obs: pd.DataFrame, name: str, place: str = "X") -> None:
    """Geneformer needs raw counts: finite, non-negative integers (every chunk is checked, not just the sample
    `find_layout` judged)."""
    problem = judge_counts(X, obs.index)
    if problem:
        raise InputError(f"{name}: {place} holds {problem}; Geneformer needs raw integer counts")
