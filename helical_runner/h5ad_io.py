"""Row slices of an .h5ad file without loading it whole, and the checks every slice must pass.

Opens the file with h5py and reads `obs` and `var` (small) with anndata's element reader; `X` stays on
disk and is read a row range at a time through anndata's backed sparse dataset (CSR) or h5py slicing
(dense), so memory follows the chunk size, not the file size. Layers, obsm and raw are not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset

from helical_runner.errors import InputError

ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


@dataclass
class RowSlice:
    X: sp.csr_matrix
    obs: pd.DataFrame
    start: int


class H5adRows:
    """An open .h5ad whose rows can be read a range at a time. Use as a context manager."""

    def __init__(self, path: Path, name: str):
        self.name = name  # what error messages call the file (its URL)
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise InputError(f"{name} is not a readable .h5ad (HDF5) file: {_reason(exc)}") from None
        try:
            missing = [k for k in ("X", "obs", "var") if k not in self._file]
            if missing:
                raise InputError(f"{name} is HDF5 but not an AnnData .h5ad: no {'/'.join(missing)}")
            self.obs: pd.DataFrame = read_elem(self._file["obs"])
            self.var: pd.DataFrame = read_elem(self._file["var"])
            self._X = self._open_matrix(self._file["X"])
        except InputError:
            self.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            self.close()
            raise InputError(f"{name} is truncated or corrupt: {_reason(exc)}") from None
        if self._X.shape != (len(self.obs), len(self.var)):
            self.close()
            raise InputError(f"{name} is inconsistent: X is {self._X.shape}, obs x var is {len(self.obs)} x {len(self.var)}")

    def _open_matrix(self, node):
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise InputError(f"{self.name}: X is not a matrix")
            return node
        encoding = node.attrs.get("encoding-type", "")
        if encoding == "csc_matrix":
            raise InputError(f"{self.name}: X is stored as CSC, whose rows cannot be streamed; "
                             "save it as CSR (adata.X = adata.X.tocsr()) and upload again")
        if encoding != "csr_matrix":
            raise InputError(f"{self.name}: X has unsupported encoding '{encoding}'")
        return sparse_dataset(node)

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def x_dtype(self) -> np.dtype:
        return np.dtype(self._X.dtype)

    def rows(self, start: int, stop: int) -> RowSlice:
        try:
            block = self._X[start:stop]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.name} is truncated or corrupt (rows {start}-{stop}): {_reason(exc)}") from None
        X = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        return RowSlice(X=X, obs=self.obs.iloc[start:stop], start=start)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "H5adRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    return text[:200] or type(exc).__name__


def gene_ids(var: pd.DataFrame) -> np.ndarray:
    """Gene ids of var: its `ensembl_id` column if present, else var names (Ensembl ids or symbols;
    the tokenizer maps symbols through the model's own mapping). Ensembl version suffixes are dropped."""
    ids = var["ensembl_id"].astype(str).to_numpy() if "ensembl_id" in var.columns else var.index.astype(str).to_numpy()
    return np.array([g.split(".")[0] if ENSEMBL_ID.match(g) else g for g in ids])


def check_counts(X: sp.csr_matrix, obs: pd.DataFrame, name: str) -> None:
    """Geneformer needs raw counts: finite, non-negative integers."""
    data = X.data
    if data.size == 0:
        return
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(f"{name}: X contains NaN or infinite values (cell '{_cell_of(X, obs, bad)}')")
    bad = data < 0
    if bad.any():
        raise InputError(f"{name}: X contains negative counts (cell '{_cell_of(X, obs, bad)}'); raw counts are needed")
    bad = data != np.round(data)
    if bad.any():
        example = data[bad][0]
        raise InputError(f"{name}: X holds non-integer values such as {example:.4g} (cell '{_cell_of(X, obs, bad)}'); "
                         "Geneformer needs raw integer counts, not normalised data")


def _cell_of(X: sp.csr_matrix, obs: pd.DataFrame, mask: np.ndarray) -> str:
    position = int(np.argmax(mask))
    row = int(np.searchsorted(X.indptr, position, side="right") - 1)
    return str(obs.index[row])
