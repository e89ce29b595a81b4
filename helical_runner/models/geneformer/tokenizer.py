"""Geneformer's rank-value tokenization of one chunk of cells, token-for-token equal to helical's.

helical's `TranscriptomeTokenizer.tokenize_anndata` + `create_dataset` need a whole AnnData and build a
HuggingFace Dataset; here the same arithmetic runs on one CSR chunk and returns plain arrays, so chunks
can be tokenized off the training thread. The expressions below are helical's own, in the same order and
dtypes: `np.argsort` is not stable, so equal scores must be equal bit for bit to rank the same way
(tests/test_tokenizer.py checks against helical on data with ties).

Genes that map to one Ensembl id (two symbols of one gene, an id listed twice) are summed into one column,
as helical's `sum_ensembl_ids` does with `collapse_gene_ids=True` (its default): the summed genes go after
the others, in order of first appearance, as helical orders them (the order ties are ranked in). Differences, by design: helical 3.1.4 sums only when two different
names map to one id (an id listed twice is tokenized twice) and its `tokenize_anndata` then fails on the
summed AnnData; here every duplicate is summed. Cells with no expressed vocabulary gene are dropped and
counted (helical would emit a `<cls><eos>` cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from helical_runner.errors import InputError
from helical_runner.data.h5ad_io import ENSEMBL_ID
from helical_runner.models.geneformer.files import ModelFiles, read_json

TARGET_SUM = 10_000  # helical's normalisation target (counts per cell)


@dataclass(frozen=True)
class GeneColumns:
    """How a file's genes become the tokenizer's columns (see the module docstring)."""

    tokens: np.ndarray  # one token per output column
    medians: np.ndarray  # its median normaliser
    combine: sp.csr_matrix  # [file genes, output columns] 0/1: X @ combine gives the columns
    collapsed: int  # file genes folded into another's column
    positions: np.ndarray  # file column of each output column when none is summed (identity)
    identity: bool  # no gene summed: columns are picked, not summed

    @property
    def n_genes(self) -> int:
        return len(self.tokens)


@dataclass
class TokenizedCells:
    """One chunk's cells as token sequences, special tokens included."""

    input_ids: list[np.ndarray]
    lengths: np.ndarray  # int64, tokens per cell
    cell_ids: np.ndarray  # obs_names of the kept cells
    kept: np.ndarray  # bool mask over the chunk's cells
    dropped_empty: int  # cells with no expressed vocabulary gene


class GeneformerTokenizer:
    def __init__(self, files: ModelFiles, max_input_size: int | None = None):
        self.token_dict: dict[str, int] = read_json(files.token_dictionary)
        self.median_dict: dict[str, float] = read_json(files.gene_median_dictionary)
        self.special_token = files.special_token
        self.input_size = min(max_input_size or files.input_size, files.input_size)
        self.pad_id = self.token_dict["<pad>"]
        self.cls_id = self.token_dict.get("<cls>")
        self.eos_id = self.token_dict.get("<eos>")
        # Symbols (not Ensembl ids) are looked up in the model's own mapping file, offline. Ensembl ids
        # are used as they are, as helical does, so retired ids are not silently remapped.
        mapping = read_json(files.ensembl_mapping)
        # helical looks up the upper-cased name among the keys as the file spells them (Geneformer's are upper case)
        self.symbol_map = {k: v for k, v in mapping.items() if v in self.token_dict}
        self._columns_cache: tuple[tuple, GeneColumns] | None = None

    def known_genes(self, ids) -> int:
        """How many distinct vocabulary genes these gene ids give (after symbol mapping and collapsing)."""
        return self.columns(ids).n_genes

    def resolve(self, gene_ids) -> list[str]:
        """Each gene id as the vocabulary's Ensembl id, or '' when the model does not know it.

        Ensembl ids are used as they are, as helical does, so retired ids are not silently remapped; symbols
        go through the model's own mapping file, offline."""
        return [g if g in self.token_dict or ENSEMBL_ID.match(g) else self.symbol_map.get(g.upper(), "")
                for g in map(str, gene_ids)]

    def columns(self, gene_ids) -> GeneColumns:
        """The vocabulary columns of a file's genes, duplicates summed (see the module docstring)."""
        key = tuple(gene_ids)
        if self._columns_cache is not None and self._columns_cache[0] == key:
            return self._columns_cache[1]
        resolved = self.resolve(key)
        first: dict[str, list[int]] = {}
        for position, gene in enumerate(resolved):
            if gene in self.token_dict:
                first.setdefault(gene, []).append(position)
        singles = [g for g, p in first.items() if len(p) == 1]
        summed = [g for g, p in first.items() if len(p) > 1]
        order = sorted(singles, key=lambda g: first[g][0]) + summed  # helical's order after collapsing
        missing_median = [g for g in order if g not in self.median_dict]
        if missing_median:
            raise InputError(f"model files: genes without a median in the median dictionary (e.g. {missing_median[0]})")
        rows = [p for g in order for p in first[g]]
        cols = [j for j, g in enumerate(order) for _ in first[g]]
        combine = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(key), len(order)))
        result = GeneColumns(tokens=np.array([self.token_dict[g] for g in order], dtype=np.int64),
                             medians=np.array([self.median_dict[g] for g in order]), combine=combine,
                             collapsed=len(rows) - len(order),
                             positions=np.array([first[g][0] for g in order], dtype=np.int64), identity=not summed)
        self._columns_cache = (key, result)
        return result

    def tokenize(self, X: sp.csr_matrix, gene_ids, cell_ids, n_counts=None) -> TokenizedCells:
        """Rank-encode each cell: genes by descending count / cell total * 10,000 / gene median."""
        columns = self.columns(gene_ids)
        tokens, medians = columns.tokens, columns.medians
        if n_counts is None:
            n_counts = X.sum(axis=1)  # over all genes, as helical does
        # picked columns keep X's dtype, as helical's arithmetic does; summed ones are float32 sums like its own
        X_genes = X[:, columns.positions] if columns.identity else X @ columns.combine
        X_norm = (X_genes / np.asarray(n_counts).reshape(-1, 1)) * TARGET_SUM / medians.reshape(1, -1)
        X_norm = sp.csr_matrix(X_norm)

        body = self.input_size - 2 if self.special_token else self.input_size
        input_ids, lengths = [], []
        kept = np.zeros(X.shape[0], dtype=bool)
        for row in range(X_norm.shape[0]):
            start, stop = X_norm.indptr[row], X_norm.indptr[row + 1]
            if start == stop:
                continue
            data = X_norm.data[start:stop]
            ranked = tokens[X_norm.indices[start:stop]][np.argsort(-data)][:body]
            if self.special_token:
                ranked = np.concatenate([[self.cls_id], ranked, [self.eos_id]])
            input_ids.append(ranked.astype(np.int64))
            lengths.append(len(ranked))
            kept[row] = True
        return TokenizedCells(
            input_ids=input_ids,
            lengths=np.asarray(lengths, dtype=np.int64),
            cell_ids=np.asarray(cell_ids)[kept],
            kept=kept,
            dropped_empty=int((~kept).sum()),
        )
