"""GenePT (helical's "gpt3.5") as a model family: `embed` only (GenePT has no network to fine-tune).

A GenePT cell embedding is the cell's expression-weighted sum of its genes' text embeddings, L2-normalised,
as helical 3.1.4's GenePT computes it:
  process_data:    genes to symbols (`ensure_gene_symbols`: Ensembl ids through helical's table, genes
                   without a symbol dropped); the 2,000 seurat_v3 highly-variable genes of the whole file
                   (variable_genes.py); counts scaled to 10,000 per cell over every gene with a symbol
                   (`normalize_total(target_sum=1e4)`), then log1p; only the highly-variable genes kept;
  get_embeddings:  those genes whose upper-cased symbol is in the table (files.py), log1p values [cells,
                   genes] @ table rows [genes, width], each cell divided by its L2 norm.
Units: the embedding has the table's width (1,536 for GenePT's release) and unit length.

Streaming: the highly-variable genes need the whole file, so `genes(dataset)` reads every chunk twice
(variable_genes.py) before `tokenize`/`embed` see the chunks one at a time; each cell's embedding then
depends on its own counts and the file-wide gene choice only, never on a dense whole-file matrix.

Differences from helical, by design: two file genes with one symbol are summed into one column (the
runner's rule for every family; helical keeps the one with the most counts when they are Ensembl ids and
fails on duplicated symbols); the symbols come from the runner's gene-id decision (index or --gene-column;
helical looks the table up by var_names whatever `gene_names` says, so a symbol column beside an Ensembl
index matches nothing there); a cell with no counts in any selected gene of the table is dropped (helical
divides 0 by 0 and returns NaN for it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from helical_runner.data.h5ad_io import ENSEMBL_ID
from helical_runner.errors import InputError
from helical_runner.models import ModelRow, gene_ids
from helical_runner.models.genept import files
from helical_runner.models.genept.variable_genes import N_TOP_GENES, highly_variable
from helical_runner.models.geneformer.tokenizer import TokenizedCells

log = logging.getLogger(__name__)

FAMILY = "genept"
TARGET_SUM = 1e4  # helical's process_data: sc.pp.normalize_total(adata, target_sum=1e4)
_NULL_IDS = frozenset({"none", "nan", "na", "null", ""})  # helical's _NULL_IDENTIFIERS: no gene


def names() -> list[str]:
    return [files.NAME]


def describe(name: str) -> ModelRow:
    missing = files.missing_files()
    width = files.DEFAULT_WIDTH if missing else files.width(files.table_path())
    return ModelRow(family=FAMILY, name=name, embedding_size=width, input_size=N_TOP_GENES, fine_tunes=False,
                    cached=not missing, missing=missing)


def vocabulary(name: str, dataset) -> dict | None:
    """How the file's genes meet GenePT's table (InputError when none does); None when the table is not
    cached. Reads the table, not the file's counts: the highly-variable selection is left to `embed`."""
    if files.missing_files():
        return None
    return GeneColumns(files.read_table(files.table_path()), dataset.gene_ids).summary(name, dataset.name)


@dataclass
class GenePTCells(TokenizedCells):
    """One chunk's kept cells: `values` [kept cells, selected genes] float32 CSR of log1p(counts scaled to
    10,000), columns in GenePTEmbedder's selected-gene order; `input_ids` each cell's non-zero columns."""

    values: sp.csr_matrix = field(default_factory=lambda: sp.csr_matrix((0, 0), dtype=np.float32))


class GeneColumns:
    """The file's genes as GenePT sees them: `combine` [file genes, symbols] 0/1 sums file genes into one
    column per symbol (first appearance order; genes without a symbol have no column), `in_table` marks the
    symbols whose upper-cased spelling is a row of the table (`rows`)."""

    def __init__(self, table: files.GeneTable, file_gene_ids):
        ids = [str(g) for g in file_gene_ids]
        to_symbol = gene_ids.ensembl_to_symbol() if any(ENSEMBL_ID.match(g) for g in ids) else {}
        positions: dict[str, list[int]] = {}
        for position, gene in enumerate(ids):
            symbol = to_symbol.get(gene.split(".")[0], "") if ENSEMBL_ID.match(gene) else gene
            if symbol.strip().lower() not in _NULL_IDS:
                positions.setdefault(symbol, []).append(position)
        self.n_file = len(ids)
        self.symbols = list(positions)
        rows = [p for found in positions.values() for p in found]
        cols = [j for j, found in enumerate(positions.values()) for _ in found]
        self.combine = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                     shape=(len(ids), len(self.symbols)))
        self.collapsed = len(rows) - len(self.symbols)
        self.rows = np.array([table.rows.get(s.upper(), -1) for s in self.symbols], dtype=np.int64)
        self.in_table = self.rows >= 0
        self.file_genes_in_table = sum(len(found) for found, hit in zip(positions.values(), self.in_table) if hit)

    def counts(self, X) -> sp.csr_matrix:
        """A chunk's counts [cells, symbols], CSR in the chunk's own dtype (the highly-variable sums square
        in it, as scanpy's do); file genes of one symbol summed."""
        X = sp.csr_matrix(X)
        out = sp.csr_matrix(X @ self.combine.astype(X.dtype))
        out.sort_indices()
        return out

    def summary(self, name: str, dataset_name: str) -> dict:
        if not self.in_table.any():
            raise InputError(f"{dataset_name}: none of its {self.n_file} genes is in GenePT {name}'s table "
                             "(GenePT reads gene symbols: give --gene-column with symbols, e.g. feature_name in "
                             "CELLxGENE files)")
        return {"in_file": self.n_file, "in_vocabulary": self.file_genes_in_table,
                "tokens": int(self.in_table.sum()), "collapsed": self.collapsed}


class GenePTEmbedder:
    family = FAMILY
    obsm_key = f"X_{FAMILY}"

    def __init__(self, name: str, precision):
        self.name = name
        self.precision = precision  # nothing to autocast: one sparse product a chunk, in float64 on the CPU
        self.table = files.read_table(files.locate())
        self.hidden_size = self.table.width
        self._columns: GeneColumns | None = None
        self._selected: np.ndarray | None = None  # symbol columns the embedding sums over
        self._weights: np.ndarray | None = None  # their table rows [selected, width] float64

    def genes(self, dataset) -> dict:
        """The gene summary, after choosing the file's 2,000 highly-variable genes: reads every chunk twice
        (variable_genes.py). InputError when no gene of the file, or none of those chosen, is in the table."""
        columns = GeneColumns(self.table, dataset.gene_ids)
        summary = columns.summary(self.name, dataset.name)
        chosen = highly_variable(dataset.n_chunks, lambda i: columns.counts(dataset.load(i).X),
                                 len(columns.symbols), name=dataset.name)
        selected = np.flatnonzero(chosen & columns.in_table)
        if len(selected) == 0:
            raise InputError(f"{dataset.name}: none of its {int(chosen.sum())} highly-variable genes (scanpy's "
                             f"seurat_v3, as helical's GenePT) is in GenePT {self.name}'s table")
        self._columns, self._selected = columns, selected
        self._weights = self.table.vectors[columns.rows[selected]].astype(np.float64)
        log.info("GenePT: %d highly-variable genes, %d of them in the table, weight each cell's embedding",
                 int(chosen.sum()), len(selected))
        return {**summary, "highly_variable": int(chosen.sum()), "embedded_genes": len(selected)}

    def tokenize(self, chunk) -> GenePTCells:
        """log1p(counts scaled to 10,000 per cell over every gene with a symbol) of the selected genes; cells
        with none of them expressed are dropped."""
        if self._columns is None:
            raise RuntimeError("GenePTEmbedder.genes(dataset) chooses the genes before tokenize")
        counts = self._columns.counts(chunk.X)
        totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        totals[totals == 0] = 1.0  # scanpy leaves a cell without counts at zero
        values = sp.csr_matrix(counts[:, self._selected], dtype=np.float64)
        values = sp.csr_matrix(sp.diags(TARGET_SUM / totals) @ values)
        values.data = np.log1p(values.data)
        values.eliminate_zeros()
        kept = np.diff(values.indptr) > 0
        values = sp.csr_matrix(values[kept], dtype=np.float32)
        input_ids = [values.indices[values.indptr[r]:values.indptr[r + 1]].astype(np.int64)
                     for r in range(values.shape[0])]
        return GenePTCells(input_ids=input_ids, lengths=np.diff(values.indptr).astype(np.int64),
                           cell_ids=np.asarray(chunk.obs.index)[kept], kept=kept,
                           dropped_empty=int((~kept).sum()), values=values)

    def embed(self, tokens: GenePTCells, batch_size: int) -> np.ndarray:
        """[kept cells, width] float32 of unit L2 norm: values @ table rows, then / norm (helical's
        get_text_embeddings and get_embeddings). `batch_size` is not needed: one sparse product a chunk."""
        summed = np.asarray(tokens.values.astype(np.float64) @ self._weights)
        norms = np.linalg.norm(summed, axis=1, keepdims=True)
        norms[norms == 0] = np.nan  # an all-zero sum (possible only with zero table rows) has no direction
        return (summed / norms).astype(np.float32)


def load(name: str, precision) -> GenePTEmbedder:
    return GenePTEmbedder(name, precision)
