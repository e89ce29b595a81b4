"""Where an .h5ad keeps what the runner needs: raw counts, gene ids, obs. One place decides; every caller asks.

Users' files hold raw counts in different places (X for 10x/CellRanger exports, `raw/X` under the CELLxGENE
schema, top-level `raw.X` with `raw.var` from anndata < 0.7, `layers['counts']` by scanpy habit) and gene ids
in different places (var names, `var['gene_ids']` from scanpy's `read_10x_h5`, `var['feature_id']`, `_index`
from R converters). `find_layout` looks, in a fixed order, and returns a `Layout` saying what it chose and
what every other place holds, so `inspect`, the chunk manifest and report.json can all say it. Counts are
judged on a sample of rows, never the whole matrix.
Counts stored as floats with round-off (0.9999999999999 after a CSV round trip) are counts: values within
ROUND_OFF of an integer are rounded as rows are read (`RowReader.rows`), and the layout says so.

Groups are read like anndata's registry reads them (`anndata.io.read_elem` by their encoding attributes),
with named fallbacks for layouts it refuses: R converters' groups without encoding attributes (SeuratDisk,
sceasy), anndata 0.7's categoricals (codes with a `categories` reference into `uns` or `__categories`),
anndata < 0.7's compound obs/var datasets (categoricals as codes, their levels in `uns/<column>_categories`,
or `raw.cat/` for `raw.var`: anndata 0.6's `_to_dict_fixed_width_arrays`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helical_runner.errors import InputError

# A full Ensembl gene id (ENSG00000141510, ENSMUSG..., with an optional version); the symbol ENSA is not one.
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?(_PAR_Y)?$")
# Where gene ids may live, after the index: CellRanger/scanpy, CELLxGENE, R converters, and common spellings.
GENE_ID_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "feature_id", "ensembl", "_index")
# Layers named like raw counts are tried first, then any other layer.
COUNT_LAYERS = ("counts", "raw_counts")
SAMPLE_ROWS = 200  # rows judged per place, in up to three windows (start, middle, end)
ROUND_OFF = 1e-6  # a stored value this close to an integer is that integer (float round-off, not a measurement)
# Where anndata keeps the genes of raw counts: raw/var today, top-level raw.var before anndata 0.7
RAW_VAR = {"raw/X": "raw/var", "raw.X": "raw.var"}


@dataclass(frozen=True)
class Layout:
    """What `find_layout` chose in one .h5ad. Places are h5 paths: 'X', 'raw/X' (or anndata < 0.7's 'raw.X'),
    'layers/counts'."""

    counts: str  # the matrix read as raw counts
    counts_encoding: str  # csr_matrix | csc_matrix | dense
    counts_dtype: str  # numpy dtype name on disk
    counts_forced: bool  # chosen by --counts rather than found
    counts_round_off: float  # 0, or the largest distance from an integer in the sample ("float counts with
    #                          round-off": every value within ROUND_OFF of an integer is rounded when read)
    x_encoding: str  # how X itself is stored (csr_matrix | csc_matrix | dense | absent | unsupported ...)
    places: dict[str, str]  # every place looked at -> what it holds, in plain words
    n_obs: int
    n_vars: int  # columns of the counts matrix
    gene_source: str  # 'index' or "var['gene_ids']" (of raw/var when counts are raw/X)
    gene_column: str  # the var column itself ('' for the index): what --gene-column would name
    gene_kind: str  # ensembl | symbol
    gene_ids: list[str] = field(repr=False)  # one per counts column; Ensembl version suffixes dropped
    var_names: list[str] = field(repr=False)  # the var index of the counts matrix
    scratch_bytes: int = 0  # scratch `chunk` needs to read the counts by cells (a CSC matrix's regrouping)
    obs_columns: dict[str, str] = field(default_factory=dict)  # obs column -> what it holds (column_kinds):
    #                                                            where labels may be, for `inspect`

    def summary(self) -> dict:
        """JSON-ready description (manifest, report.json, `inspect --json`), gene lists left out."""
        facts = asdict(self)
        facts.pop("gene_ids"), facts.pop("var_names")
        return facts


# ---------------------------------------------------------------- dataframes (obs, var)

ALL_ROWS = slice(None)


def read_frame(group: h5py.Group, name: str, rows: slice = ALL_ROWS) -> pd.DataFrame:
    """obs/var as a DataFrame: anndata's reader when the group carries its encoding, else the fallbacks.

    `rows` (a slice) reads only those rows, column by column, by the fallback readers (anndata's reads whole
    elements): how obs is read a chunk at a time, so memory does not follow the number of cells."""
    if group.attrs.get("encoding-type") == "dataframe" and rows == ALL_ROWS:
        from anndata.io import read_elem

        try:
            return read_elem(group)
        except Exception:  # noqa: BLE001 - anndata refuses some writers' variants; the fallback reads them
            pass
    return _read_frame_by_hand(group, name, rows)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def index_key(group: h5py.Group) -> str | None:
    """The member holding a frame's index (row names): the `_index` attribute's, else a usual name."""
    key = _text(group.attrs.get("_index", "_index"))
    if key not in group:
        key = next((k for k in ("_index", "index", "obs_names", "var_names") if k in group), None)
    return key


def _read_frame_by_hand(group: h5py.Group, name: str, rows: slice = ALL_ROWS) -> pd.DataFrame:
    if isinstance(group, h5py.Dataset):  # anndata < 0.7 wrote obs/var as one compound dataset
        table = pd.DataFrame.from_records(group[rows])
        table = table.apply(lambda c: c.map(_text) if c.dtype == object else c)
        for column in table.columns[1:]:
            levels = _legacy_categories(group, column)
            if levels is not None and table[column].dtype.kind in "iu":
                try:
                    table[column] = pd.Categorical.from_codes(table[column].to_numpy(), categories=levels)
                except ValueError:  # not codes into those levels after all: keep the numbers
                    pass
        return table.set_index(table.columns[0]) if len(table.columns) else table
    index_key_ = index_key(group)
    order = [_text(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
    columns = order or [k for k in group if k not in (index_key_, "__categories")]
    data = {}
    for column in columns:
        if column not in group:
            continue
        try:
            data[column] = _read_column(group, column, rows)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise InputError(f"{name}/{column} cannot be read: {exc}") from None
    index = _strings(group[index_key_][rows]) if index_key_ else None
    frame = pd.DataFrame(data, index=pd.Index(index) if index is not None else None)
    if index_key_ and index_key_ != "_index" and index_key_ in frame.columns:
        frame = frame.drop(columns=index_key_)
    return frame


def _legacy_categories_node(table: h5py.Dataset, column: str):
    """Where anndata < 0.7 put the levels of a compound obs/var's categorical column: `uns/<column>_categories`
    (or `raw.cat/...` for raw.var; the oldest files kept uns at the top level), else None."""
    f, key = table.file, f"{column}_categories"
    folders = ("raw.cat",) if table.name == "/raw.var" else ("uns", "")
    for folder in folders:
        path = f"{folder}/{key}" if folder else key
        if isinstance(f.get(path), h5py.Dataset):
            return f[path]
    return None


def _legacy_categories(table: h5py.Dataset, column: str) -> np.ndarray | None:
    node = _legacy_categories_node(table, column)
    return None if node is None else _strings(np.atleast_1d(node[()]))


def _dtype_kind(dtype: np.dtype) -> str:
    if dtype.kind == "b":
        return "boolean"
    if dtype.kind in "iu":
        return "integer"
    if dtype.kind == "f":
        return "float"
    return "text" if dtype.kind in "OSU" else "other"


def column_kinds(group: h5py.Group | h5py.Dataset) -> dict[str, str]:
    """Every column of an obs/var element -> categorical | text | boolean | integer | float | other, from
    metadata only (no values read), as read_frame would read it; {} when the element cannot be understood."""
    try:
        if isinstance(group, h5py.Dataset):  # anndata < 0.7: one compound dataset, the index first
            names = group.dtype.names or ()
            return {n: "categorical" if _legacy_categories_node(group, n) is not None
                    else _dtype_kind(group.dtype[n]) for n in names[1:]}
        key = index_key(group)
        order = [_text(c) for c in np.atleast_1d(group.attrs.get("column-order", []))]
        kinds = {}
        for column in order or [k for k in group if k not in (key, "__categories")]:
            node = group.get(column)
            if isinstance(node, h5py.Group):
                if _text(node.attrs.get("encoding-type", "")) == "categorical" or {"codes", "categories"} <= set(node):
                    kinds[column] = "categorical"
                elif "values" in node and "mask" in node:
                    kinds[column] = _dtype_kind(node["values"].dtype)
                else:
                    kinds[column] = "other"
            elif isinstance(node, h5py.Dataset):
                categorical = isinstance(node.attrs.get("categories"), h5py.Reference) or (
                    isinstance(group.get("__categories"), h5py.Group) and column in group["__categories"])
                kinds[column] = "categorical" if categorical else _dtype_kind(node.dtype)
        return kinds
    except (OSError, KeyError, ValueError, TypeError):
        return {}


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([_text(v) for v in values], dtype=object) if values.dtype.kind in "OS" else values


def _read_column(group: h5py.Group, column: str, rows: slice = ALL_ROWS):
    node = group[column]
    if isinstance(node, h5py.Group):
        if node.attrs.get("encoding-type") and rows == ALL_ROWS:
            from anndata.io import read_elem

            try:
                return read_elem(node)
            except Exception:  # noqa: BLE001 - fall through to the by-hand readers below
                pass
        if "codes" in node and "categories" in node:
            categories = _strings(node["categories"][()])
            return pd.Categorical.from_codes(node["codes"][rows], categories=categories,
                                             ordered=bool(node.attrs.get("ordered", False)))
        if "values" in node and "mask" in node:  # nullable integer / boolean / string
            values, mask = node["values"][rows], node["mask"][rows].astype(bool)
            if values.dtype.kind == "b":
                return pd.arrays.BooleanArray(values, mask)
            if values.dtype.kind in "iu":
                return pd.arrays.IntegerArray(values, mask)
            return pd.array([None if m else _text(v) for v, m in zip(values, mask)], dtype="string")
        raise ValueError(f"unknown column layout (members: {', '.join(node)})")
    values = node[rows]
    reference = node.attrs.get("categories")
    if isinstance(reference, h5py.Reference):  # anndata 0.7: codes here, categories in uns/ or __categories/
        categories = _strings(group.file[reference][()])
        return pd.Categorical.from_codes(values, categories=categories,
                                         ordered=bool(node.attrs.get("ordered", False)))
    if isinstance(group.get("__categories"), h5py.Group) and column in group["__categories"]:
        return pd.Categorical.from_codes(values, categories=_strings(group["__categories"][column][()]))
    return _strings(values)


# ---------------------------------------------------------------- matrices

class RowReader:
    """Row ranges of one stored matrix (X, raw/X, raw.X or a layer), as CSR, read straight from h5py."""

    def __init__(self, node, place: str, name: str):
        self.place, self.name = place, name
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise InputError(f"{name}: {place} is not a matrix")
            self.encoding, self.shape, self._node = "dense", tuple(node.shape), node
            self.dtype = np.dtype(node.dtype)
            return
        encoding = _text(node.attrs.get("encoding-type", "")) or \
            {"csr": "csr_matrix", "csc": "csc_matrix"}.get(_text(node.attrs.get("h5sparse_format", "")), "")
        if not encoding and {"data", "indices", "indptr"} <= set(node):
            encoding = "csr_matrix"  # R writers that drop attributes keep CSR (dgRMatrix -> scipy csr)
        if encoding not in ("csr_matrix", "csc_matrix"):
            raise InputError(f"{name}: {place} has unsupported encoding '{encoding or 'none'}'")
        shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
        if shape is None:
            raise InputError(f"{name}: {place} is a sparse matrix without a shape attribute")
        self.encoding, self.shape, self._node = encoding, tuple(int(s) for s in shape), node
        self.dtype = np.dtype(node["data"].dtype)
        self._csc = None  # csc_rows.CscRows, made on the first read of rows

    def scratch_bytes(self) -> int:
        """Scratch that reading by rows needs: a CSC matrix's regrouping (csc_rows), else nothing."""
        if self.encoding != "csc_matrix":
            return 0
        from helical_runner.data.csc_rows import scratch_needed

        return scratch_needed(self._node)

    def close(self) -> None:
        """Remove what reading left on scratch (a CSC matrix's regrouped rows)."""
        if getattr(self, "_csc", None) is not None:
            self._csc.close()

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows [start, stop) as CSR (dtype as stored, values within ROUND_OFF of an integer rounded to it);
        raises InputError naming the file if unreadable."""
        return snap_round_off(self.stored_rows(start, stop))[0]

    def stored_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows [start, stop) as CSR, values exactly as stored."""
        try:
            if self.encoding == "dense":
                return sp.csr_matrix(np.asarray(self._node[start:stop]))
            if self.encoding == "csc_matrix":
                if self._csc is None:
                    from helical_runner.data.csc_rows import CscRows

                    self._csc = CscRows(self._node, self.shape, self.name, self.place)
                return self._csc.rows(start, stop)
            indptr = self._node["indptr"][start:stop + 1].astype(np.int64)
            lo, hi = int(indptr[0]), int(indptr[-1])
            return sp.csr_matrix((self._node["data"][lo:hi], self._node["indices"][lo:hi], indptr - lo),
                                 shape=(stop - start, self.shape[1]))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.name} is truncated or corrupt ({self.place} rows {start}-{stop}): "
                             f"{_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    return text[:200] or type(exc).__name__


# ---------------------------------------------------------------- counts

def _sample(reader: RowReader) -> tuple[sp.csr_matrix, np.ndarray]:
    """Up to SAMPLE_ROWS rows in three windows (start, middle, end) and their row numbers (for CSC, the rows
    that a few windows of columns touch: rows of CSC cannot be read without a pass over the whole matrix)."""
    if reader.encoding == "csc_matrix":
        from helical_runner.data.csc_rows import csc_sample

        return csc_sample(reader._node, reader.shape)
    n = reader.shape[0]
    size = max(1, SAMPLE_ROWS // 3)
    starts = sorted({0, max(0, n // 2 - size // 2), max(0, n - size)})
    blocks, rows, seen = [], [], set()
    for s in starts:
        stop = min(n, s + size)
        picked = [r for r in range(s, stop) if r not in seen]
        if not picked:
            continue
        block = reader.stored_rows(picked[0], picked[-1] + 1)
        seen.update(picked)
        blocks.append(block)
        rows.extend(range(picked[0], picked[-1] + 1))
    if not blocks:
        return sp.csr_matrix((0, reader.shape[1])), np.zeros(0, dtype=int)
    return sp.vstack(blocks, format="csr"), np.asarray(rows)


def snap_round_off(X: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
    """X with every float value within ROUND_OFF of an integer set to that integer (in place), and the largest
    distance so removed (0.0: X held exact integers there). Values further off stay as they are, for
    judge_counts to refuse."""
    data = X.data
    if data.dtype.kind != "f" or data.size == 0:
        return X, 0.0
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, never "near"
        nearest = np.rint(data)
        off = np.abs(data - nearest)
        near = (off > 0) & (off <= ROUND_OFF)
    if not near.any():
        return X, 0.0
    largest = float(off[near].max())
    data[near] = nearest[near]
    if not nearest[near].all():  # 1e-9 is a zero: not a stored (expressed) value
        X.eliminate_zeros()
    return X, largest


def _looks_like(X: sp.csr_matrix) -> str:
    """What a matrix that is not counts looks like, from its values: ', which looks scaled (...)' for
    centred values (sc.pp.scale), ', which looks log-normalised (max ...)' for mostly non-integer values
    below 20 (log1p of normalised counts stays under ~14), ', which looks normalised (max ...)' for mostly
    non-integer larger values (CPM, TPM); '' when a few bad values sit among counts."""
    data = X.data[np.isfinite(X.data)] if X.data.dtype.kind == "f" else X.data
    cells = X.shape[0] * X.shape[1]
    if data.size == 0 or cells == 0:
        return ""
    data = data.astype(np.float64)
    mean = data.sum() / cells  # implicit zeros count: a scaled matrix is usually dense anyway
    spread = np.sqrt(max(float((data ** 2).sum() / cells - mean ** 2), 0.0))
    negative = float((data < 0).mean())
    if negative > 0.05 or (negative > 0 and abs(mean) < 0.1 * spread):
        return f", which looks scaled (mean {mean:.2g}, {negative:.0%} negative)"
    fractional = float((data != np.rint(data)).mean())
    if negative == 0 and fractional > 0.5:
        biggest = float(data.max())
        kind = "log-normalised" if biggest < 20 else "normalised"
        return f", which looks {kind} (max {biggest:.3g})"
    return ""


def judge_counts(X: sp.csr_matrix, cells) -> str | None:
    """None when X holds finite, non-negative integers (raw counts), else what it holds instead, in one line:
    the first offending cell, a non-integer value with every digit it has (0.99999, never a rounded "1"),
    and what X looks like (log-normalised, scaled) when its values say so."""
    data = X.data
    if data.size == 0:
        return None
    for bad, what in ((~np.isfinite(data) if data.dtype.kind == "f" else None, "NaN or infinite values"),
                      (data < 0, "negative counts"),
                      (data != np.rint(data) if data.dtype.kind == "f" else None, "non-integer values")):
        if bad is not None and bad.any():
            position = int(np.argmax(bad))
            cell = cells[int(np.searchsorted(X.indptr, position, side="right") - 1)]
            # str() of a numpy scalar of the stored dtype: the shortest text that reads back as that number
            example = f" such as {data[position]!s}" if what == "non-integer values" else ""
            return f"{what}{example} (cell '{cell}'){_looks_like(X) if what != 'NaN or infinite values' else ''}"
    return None


def _raw_place(f: h5py.File) -> str:
    """raw/X, or anndata < 0.7's top-level raw.X when only that is there (anndata reads either as .raw)."""
    return "raw.X" if "raw.X" in f and "raw/X" not in f else "raw/X"


def _candidates(f: h5py.File) -> list[str]:
    places = ["X", _raw_place(f)]
    layers = f.get("layers")
    if isinstance(layers, h5py.Group):
        named = [f"layers/{k}" for k in COUNT_LAYERS if k in layers]
        places += named + sorted(f"layers/{k}" for k in layers if f"layers/{k}" not in named)
    return places


def _var_of(f: h5py.File, place: str, var: pd.DataFrame, name: str) -> pd.DataFrame:
    """The var that labels a matrix's columns: raw/var for raw/X, raw.var for raw.X (they may hold more genes
    than var)."""
    raw_var = RAW_VAR.get(place)
    if raw_var and raw_var in f:
        return read_frame(f[raw_var], f"{name}: {raw_var}")
    return var


def find_counts(f: h5py.File, obs_names, name: str, forced: str | None = None) -> tuple[RowReader, dict, bool, float]:
    """The first place holding raw counts (or the forced one): its reader, what every place holds, forced,
    and the largest round-off the sample showed there (0.0: exact integers)."""
    places: dict[str, str] = {}
    order = _candidates(f)
    if forced:
        forced = forced.strip("/")
        forced = _raw_place(f) if forced in ("raw", "raw/X") else forced
        if forced not in f:
            raise InputError(f"{name}: --counts {forced}: no such matrix (places: {', '.join(p for p in order if p in f) or 'none'})")
        order = [forced]
    for place in order:
        if place not in f:
            places[place] = "absent"
            continue
        reader = RowReader(f[place], place, name)
        if reader.shape[0] != len(obs_names):
            places[place] = f"{reader.shape[0]} rows for {len(obs_names)} cells"
            continue
        sample, rows = _sample(reader)
        sample, round_off = snap_round_off(sample)
        problem = judge_counts(sample, obs_names[rows] if len(rows) else [])
        places[place] = problem or (f"float counts with round-off ({reader.dtype.name}, up to {round_off:.2g} "
                                    "from integers: rounded)" if round_off else f"integer counts ({reader.dtype.name})")
        if problem is None or forced:
            if problem and forced:
                raise InputError(f"{name}: {place} (chosen by --counts) holds {problem}; raw integer counts are needed")
            return reader, places, bool(forced), round_off
    held = "; ".join(f"{p} holds {h}" if h != "absent" else f"no {p}" for p, h in places.items())
    raise InputError(f"{name}: no raw integer counts found: {held}; Geneformer needs raw counts")


# ---------------------------------------------------------------- gene ids

def normalise_ids(values) -> np.ndarray:
    """Strings, with Ensembl version (and GENCODE _PAR_Y) suffixes dropped."""
    out = []
    for g in values:
        g = _text(g)
        out.append(g.split(".")[0] if ENSEMBL_ID.match(g) else g)
    return np.array(out, dtype=object)


def find_gene_ids(var: pd.DataFrame, name: str, column: str | None = None,
                  prefer: str | None = None) -> tuple[str, str, np.ndarray]:
    """(where, ensembl|symbol, ids): the var column or index whose values are Ensembl ids, else the index.

    The first of the index and GENE_ID_COLUMNS in which most values are full Ensembl ids wins; a file
    without ids anywhere is read by symbols (var names), which the tokenizer maps through the model's
    mapping file. `column` (--gene-column) forces a var column ('index' for var names); `prefer` (the column
    a model was trained from) is looked at first when the file has it.
    """
    sources = {f"var['{prefer}']": var[prefer]} if prefer and prefer in var.columns else {}
    sources["index"] = var.index
    sources.update({f"var['{c}']": var[c] for c in GENE_ID_COLUMNS if c in var.columns})
    if column:
        if column not in ("index", "_index") and column not in var.columns:
            raise InputError(f"{name}: --gene-column {column}: var has no such column "
                             f"(columns: {', '.join(map(str, var.columns)) or 'none'})")
        key = "index" if column in ("index", "_index") and column not in var.columns else f"var['{column}']"
        values = var.index if key == "index" else var[column]
        sources = {key: values}
    for where, values in sources.items():
        text = pd.Series(values).astype(str)
        if len(text) and text.str.match(ENSEMBL_ID).mean() > 0.5:
            return where, "ensembl", normalise_ids(text)
    where, values = next(iter(sources.items()))
    return where, "symbol", normalise_ids(pd.Series(values).astype(str))


# ---------------------------------------------------------------- the decision

def _encoding_of(f: h5py.File, place: str, name: str) -> str:
    if place not in f:
        return "absent"
    try:
        return RowReader(f[place], place, name).encoding
    except InputError as exc:
        return str(exc).split(": ", 1)[-1]


def find_layout(f: h5py.File, obs_names, var: pd.DataFrame, name: str, counts: str | None = None,
                gene_column: str | None = None, prefer_gene_column: str | None = None) -> tuple[Layout, RowReader]:
    """Decide where counts and gene ids are (see the module docstring); InputError with one line if nowhere.

    `obs_names`: the cells' names, anything with len() and indexing by an array of positions (a pandas
    Index, or obs_rows.CellNames, which reads only the names asked for)."""
    reader, places, forced, round_off = find_counts(f, obs_names, name, counts)
    genes = _var_of(f, reader.place, var, name)
    if len(genes) != reader.shape[1]:
        raise InputError(f"{name} is inconsistent: {reader.place} has {reader.shape[1]} columns, "
                         f"its var {len(genes)} genes")
    where, kind, ids = find_gene_ids(genes, name, gene_column, prefer_gene_column)
    raw_var = RAW_VAR.get(reader.place)
    if raw_var and raw_var in f:
        where = f"{raw_var} {where}"
    layout = Layout(counts=reader.place, counts_encoding=reader.encoding, counts_dtype=reader.dtype.name,
                    counts_forced=forced, counts_round_off=round_off, x_encoding=_encoding_of(f, "X", name),
                    places=places, n_obs=len(obs_names), n_vars=reader.shape[1], gene_source=where,
                    gene_column=where.split("'")[1] if "'" in where else "", gene_kind=kind,
                    gene_ids=[str(g) for g in ids], var_names=[str(g) for g in genes.index],
                    scratch_bytes=reader.scratch_bytes(), obs_columns=column_kinds(f["obs"]) if "obs" in f else {})
    return layout, reader
