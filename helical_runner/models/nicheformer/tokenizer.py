"""Nicheformer's input for one CSR chunk, made by helical's own NicheformerTokenizer.

helical's `Nicheformer.process_data` keeps the file's genes that are keys of vocab.json (Ensembl ids; symbols
are first mapped through helical's table) and calls its tokenizer on them, which
  1. concatenates the reference model.h5ad before the cells (anndata's outer join: the columns become the
     union of the reference's genes and the file's, pandas-sorted unless they are equal) and drops the
     reference's rows; a gene's token is its column there + 30 (vocab.json's ids are not used for this);
  2. scales each cell to 10,000 counts (over those columns), takes log1p, and lists the cell's expressed genes
     by decreasing value (a numba argsort: ties fall as its quicksort leaves them), padded with [PAD] (1) to
     max_length 1,500;
  3. puts context tokens first for the obs columns `specie`, `assay`, `modality` the cells (or the reference)
     have, in that order (helical's dicts; an unknown value or a missing one is [PAD]), cutting the genes to
     1,500 tokens in all; attention covers every token that is not [PAD].
Step 1 and 2 depend on a cell's own counts only, so helical's tokenizer is called here on blocks of a chunk's
cells (the file's genes summed per Ensembl id) and gives the tokens it gives on the whole file.

Genes: Ensembl ids as they are (versions already cut by the runner's reader; helical matches a versioned id
to nothing), symbols through helical's table (gene_ids.py). Two file genes of one id are summed into one
column (helical's concatenation fails on a repeated gene).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from helical_runner.data.h5ad_io import ENSEMBL_ID
from helical_runner.errors import InputError
from helical_runner.models import gene_ids
from helical_runner.models.geneformer.tokenizer import TokenizedCells

CONTEXT_COLUMNS = ("specie", "assay", "modality")  # the obs columns helical's tokenizer reads
BLOCK_CELLS = 256  # cells per call of helical's tokenizer: it makes a dense [cells, ~20,000] matrix


@dataclass
class NicheformerCells(TokenizedCells):
    attention_mask: list[np.ndarray] = field(default_factory=list)  # bool per token: not [PAD]


def vocabulary_genes(vocab: dict) -> set[str]:
    """The genes of a Nicheformer vocabulary: its keys not in brackets (helical's process_data rule)."""
    return {k for k in vocab if not k.startswith("[")}


class NicheformerTokenizer:
    """`genes`: the vocabulary's genes; `helical_tokenizer`: helical's NicheformerTokenizer, needed by
    `tokenize` only (`columns` serves `inspect` without loading the reference)."""

    def __init__(self, genes: set[str], helical_tokenizer=None):
        self.helical = helical_tokenizer
        self.genes = genes
        self.max_length = int(helical_tokenizer.max_length) if helical_tokenizer is not None else None
        self._cache: tuple[tuple, tuple[sp.csr_matrix, pd.Index, int]] | None = None

    def ensembl_ids(self, file_gene_ids) -> list[str]:
        ids = [str(g) for g in file_gene_ids]
        if all(ENSEMBL_ID.match(g) for g in ids):
            return [g.split(".")[0] for g in ids]
        table = gene_ids.symbol_to_ensembl()
        return [g.split(".")[0] if ENSEMBL_ID.match(g) else table.get(g, "") for g in ids]

    def columns(self, file_gene_ids) -> tuple[sp.csr_matrix, pd.Index, int]:
        """(combine [file genes, vocabulary genes] 0/1, those genes' Ensembl ids in order of first appearance,
        file genes summed into another's column)."""
        key = tuple(map(str, file_gene_ids))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        first: dict[str, list[int]] = {}
        for position, gene in enumerate(self.ensembl_ids(key)):
            if gene in self.genes:
                first.setdefault(gene, []).append(position)
        rows = [p for positions in first.values() for p in positions]
        cols = [j for j, positions in enumerate(first.values()) for _ in positions]
        combine = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(key), len(first)))
        result = (combine, pd.Index(list(first)), len(rows) - len(first))
        self._cache = (key, result)
        return result

    def tokenize(self, X: sp.csr_matrix, gene_ids, obs: pd.DataFrame) -> NicheformerCells:
        """Each kept cell's 1,500 token ids and attention mask, as helical's tokenizer makes them; cells with no
        expressed vocabulary gene are dropped (helical pools them over context tokens or nothing)."""
        import anndata

        combine, genes, _ = self.columns(gene_ids)
        if combine.shape[1] == 0:
            raise InputError("none of the file's genes is in Nicheformer's vocabulary (Ensembl ids)")
        X = sp.csr_matrix(X)
        counts = sp.csr_matrix(X @ combine.astype(X.dtype))
        counts.eliminate_zeros()
        kept = np.diff(counts.indptr) > 0
        counts = counts[kept]
        context = obs.loc[kept, [c for c in CONTEXT_COLUMNS if c in obs.columns]]
        input_ids, masks = [], []
        for start in range(0, counts.shape[0], BLOCK_CELLS):
            block = slice(start, start + BLOCK_CELLS)
            cell_obs = context.iloc[block].copy()
            cell_obs.index = [f"cell-{start + i}" for i in range(len(cell_obs))]
            cells = anndata.AnnData(X=counts[block], obs=cell_obs, var=pd.DataFrame(index=genes))
            with warnings.catch_warnings():  # helical restores obs dtypes on a view: anndata says so per block
                warnings.simplefilter("ignore", anndata.ImplicitModificationWarning)
                out = self.helical(cells)
            input_ids.extend(out["input_ids"].numpy())
            masks.extend(out["attention_mask"].numpy())
        return NicheformerCells(input_ids=input_ids, lengths=np.array([int(m.sum()) for m in masks], dtype=np.int64),
                                cell_ids=np.asarray(obs.index)[kept], kept=kept, dropped_empty=int((~kept).sum()),
                                attention_mask=masks)
