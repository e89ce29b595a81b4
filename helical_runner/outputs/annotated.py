"""predictions.h5ad / embeddings.h5ad: the input's cells with their predictions and embeddings, written chunk
by chunk.

An AnnData without X (no copy of the counts) and without genes in var:
  obs                       the input's obs columns; with a label column (predict), `predicted_<label column>`
                            (categorical over the model's classes) and `prediction_confidence` (float32, the
                            top probability); cells the model could not read (no vocabulary gene) keep their
                            row, with a missing prediction and NaN confidence and embedding
  obsm['X_<family>']        cell embeddings [cells, hidden] float32 (X_geneformer, ...), unless turned off

The first chunk is written with anndata's `write_elem`, so every element carries anndata's encoding
attributes, into resizable datasets; later chunks are appended with h5py's `resize`. Categorical columns'
categories can grow from chunk to chunk (a chunk may lack a category), so their codes are remapped to one
growing category list that is written last. Memory holds one chunk whatever the number of cells, and
`anndata.read_h5ad` reads the result (anndata's on-disk format: anndata.readthedocs.io, "On-disk format").
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PREDICTIONS_H5AD = "predictions.h5ad"
EMBEDDING_KEY = "X_geneformer"
CONFIDENCE = "prediction_confidence"


def every_cell(kept: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`rows` [kept cells, width] spread over all of a chunk's cells as float32, NaN where `kept` is False
    (cells with no vocabulary gene keep their row in the file, without an embedding)."""
    full = np.full((len(kept), rows.shape[1]), np.nan, dtype=np.float32)
    full[kept] = rows
    return full


def predicted_column(label_column: str) -> str:
    return f"predicted_{label_column}"


def _storable(values: pd.Series) -> pd.Series | pd.Categorical:
    """A column in a form that appends cleanly: categoricals with string categories, numpy numbers and
    booleans as they are, nullable numbers as float64 with NaN, everything else as strings."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.rename_categories([str(c) for c in values.cat.categories])
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "biuf":
        return values
    if pd.api.types.is_numeric_dtype(values.dtype):  # pandas' nullable Int64/Float64/boolean: NA -> NaN
        return pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index)
    return values.astype(str).astype(object)


class AnnotatedWriter:
    """Appends chunks of annotated cells to an .h5ad; `close()` finishes the file (see module docstring)."""

    def __init__(self, path: Path, label_column: str | None, classes: list[str], embedding_dim: int | None,
                 embedding_key: str = EMBEDDING_KEY):
        self.path = path
        self.label_column = label_column  # None: no prediction columns (embed)
        self.classes = list(classes)
        self.embedding_dim = embedding_dim
        self.embedding_key = embedding_key
        self.n_obs = 0
        self._file: h5py.File | None = None
        self._categories: dict[str, list[str]] = {}  # categorical obs column -> its categories so far
        self._columns: list[str] = []

    def append(self, obs: pd.DataFrame, predicted: np.ndarray | None, confidence: np.ndarray | None,
               embeddings: np.ndarray | None) -> None:
        """One chunk: obs [n rows], predicted class indices [n] (-1: none), confidence [n] (NaN: none),
        embeddings [n, embedding_dim] (NaN rows: none; ignored when the writer keeps no embeddings)."""
        from anndata.io import write_elem

        frame = pd.DataFrame({str(c): _storable(obs[c]) for c in obs.columns if str(c) != "_index"},
                             index=pd.Index(obs.index.astype(str), name=None))
        if self.label_column is not None:
            ours = predicted_column(self.label_column)
            frame[ours] = pd.Categorical.from_codes(np.asarray(predicted, dtype=np.int64), categories=self.classes)
            frame[CONFIDENCE] = np.asarray(confidence, dtype=np.float32)
        n = len(frame)
        if self._file is None:
            self._start(frame, embeddings, write_elem)
        else:
            self._append_obs(frame)
            if self.embedding_dim is not None:
                self._extend(self._file["obsm"][self.embedding_key], np.asarray(embeddings, dtype=np.float32))
        self.n_obs += n

    def _start(self, frame: pd.DataFrame, embeddings, write_elem) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "w")
        self._file.attrs["encoding-type"] = "anndata"
        self._file.attrs["encoding-version"] = "0.1.0"
        write_elem(self._file, "obs", frame, dataset_kwargs={"maxshape": (None,)})
        self._columns = list(frame.columns)
        self._categories = {c: list(frame[c].cat.categories) for c in frame.columns
                            if isinstance(frame[c].dtype, pd.CategoricalDtype)}
        for column in self._categories:  # pandas picks int8 codes for few categories: room for later ones
            group = self._file["obs"][column]
            codes, attrs = group["codes"][...], dict(group["codes"].attrs)
            del group["codes"]
            group.create_dataset("codes", data=codes.astype(np.int32), maxshape=(None,))
            group["codes"].attrs.update(attrs)  # anndata's encoding-type/-version
        write_elem(self._file, "obsm", {})
        if self.embedding_dim is not None:
            write_elem(self._file["obsm"], self.embedding_key, np.asarray(embeddings, dtype=np.float32),
                       dataset_kwargs={"maxshape": (None, self.embedding_dim)})

    def _append_obs(self, frame: pd.DataFrame) -> None:
        group = self._file["obs"]
        if list(frame.columns) != self._columns:
            from helical_runner.errors import InputError

            raise InputError(f"chunk obs columns {list(frame.columns)} differ from the first chunk's {self._columns}")
        self._extend(group[group.attrs["_index"]], frame.index.to_numpy(dtype=object))
        for column in self._columns:
            values = frame[column]
            if column in self._categories:
                known = self._categories[column]
                for category in values.cat.categories:
                    if category not in known:
                        known.append(category)
                lookup = np.array([known.index(c) for c in values.cat.categories] + [-1], dtype=np.int64)
                codes = lookup[values.cat.codes.to_numpy()]  # code -1 (missing) indexes the trailing -1
                self._extend(group[column]["codes"], codes)
            else:
                self._extend(group[column], values.to_numpy())

    @staticmethod
    def _extend(dataset: h5py.Dataset, rows: np.ndarray) -> None:
        start = dataset.shape[0]
        dataset.resize(start + len(rows), axis=0)
        # variable-length strings (dtype kind "O") take Python str objects as they are
        dataset[start:] = rows if dataset.dtype.kind == "O" else rows.astype(dataset.dtype)

    def close(self) -> int:
        """Write the categories and the empty elements; returns the number of cells written."""
        from anndata.io import write_elem

        if self._file is None:
            return 0
        try:
            group = self._file["obs"]
            for column, categories in self._categories.items():
                del group[column]["categories"]
                write_elem(group[column], "categories", np.array(categories, dtype=object))
            write_elem(self._file, "var", pd.DataFrame(index=pd.Index([], dtype=object)))
            for empty in ("varm", "obsp", "varp", "layers", "uns"):
                write_elem(self._file, empty, {})
        finally:
            self._file.close()
            self._file = None
        return self.n_obs
