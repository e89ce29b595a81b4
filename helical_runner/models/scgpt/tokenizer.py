"""scGPT's input for one CSR chunk: gene tokens and binned expression values, as helical builds them.

helical's `scGPT.process_data` keeps the file's genes that are in the vocabulary (keyed by gene symbol) in
file order; its `Dataset` takes each cell's non-zero genes in that order behind a `<cls>` (value -2); its
`DataCollator` bins the values of each cell into 51 bins (`binning`, helical's own function, called here)
and, for a cell with more than 1,200 tokens, keeps `<cls>` and 1,199 genes drawn by `torch.randperm` with a
generator seeded 0. The same steps run here per chunk, so a cell's tokens don't depend on its neighbours.

Genes: symbols are looked up as they are; Ensembl ids are first turned into symbols with helical's own
table (`hsapiens_pybiomart.csv` in helical's cache, what its `ensure_gene_symbols` reads) or, without it,
the runner's table of protein-coding genes (data/genes.py). Two file genes with one symbol are summed into
one column (helical keeps the one with the most counts over the whole file, which a stream can't know).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from helical_runner.data.h5ad_io import ENSEMBL_ID
from helical_runner.errors import InputError
from helical_runner.models.geneformer.tokenizer import TokenizedCells
from helical_runner.models.scgpt.files import MAX_LENGTH, PAD_VALUE

N_BINS = 51  # helical's DataCollator: binning(row, n_bins=51)


def _ensembl_to_symbol() -> dict[str, str]:
    from helical.constants.paths import CACHE_DIR_HELICAL

    table = Path(CACHE_DIR_HELICAL) / "hsapiens_pybiomart.csv"
    if table.is_file():
        import pandas as pd

        frame = pd.read_csv(table, index_col=0).dropna(subset=["gene_name"])
        return dict(zip(frame["ensembl_id"].astype(str), frame["gene_name"].astype(str)))
    from helical_runner.data import genes

    return {ensembl_id: symbol for symbol, ensembl_id in genes.load().symbols.items()}


class ScgptTokenizer:
    def __init__(self, vocab: dict[str, int], max_length: int = MAX_LENGTH):
        self.vocab = vocab
        self.pad_id = int(vocab["<pad>"])
        self.cls_id = int(vocab["<cls>"])
        self.max_length = max_length
        # imported here, on the caller's thread: helical's scgpt package imports binning from its __init__, and a
        # first import from a prefetch thread racing the model's import on the main one sees it half-initialised
        from helical.models.scgpt.binning import binning

        self._binning = binning
        self._cache: tuple[tuple, tuple[sp.csr_matrix, np.ndarray, int]] | None = None

    def symbols(self, gene_ids) -> list[str]:
        ids = [str(g) for g in gene_ids]
        if not any(ENSEMBL_ID.match(g) for g in ids):
            return ids
        table = _ensembl_to_symbol()
        return [table.get(g.split(".")[0], "") if ENSEMBL_ID.match(g) else g for g in ids]

    def columns(self, gene_ids) -> tuple[sp.csr_matrix, np.ndarray, int]:
        """(combine [file genes, vocabulary columns] 0/1, each column's token, file genes summed into
        another's column), columns in order of first appearance in the file."""
        key = tuple(map(str, gene_ids))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        first: dict[str, list[int]] = {}
        for position, symbol in enumerate(self.symbols(key)):
            if symbol in self.vocab and symbol not in ("<pad>", "<cls>", "<eoc>"):
                first.setdefault(symbol, []).append(position)
        rows = [p for positions in first.values() for p in positions]
        cols = [j for j, positions in enumerate(first.values()) for _ in positions]
        combine = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(key), len(first)))
        result = (combine, np.array([self.vocab[s] for s in first], dtype=np.int64), len(rows) - len(first))
        self._cache = (key, result)
        return result

    def tokenize(self, X: sp.csr_matrix, gene_ids, cell_ids) -> TokenizedCells:
        """Each cell as an int64 array [tokens, 2] in `input_ids`: column 0 the gene tokens (<cls>, then its
        expressed vocabulary genes), column 1 their binned values (0-50; <cls> -2). Cells with no expressed
        vocabulary gene are dropped (`kept` False)."""
        import torch

        combine, tokens, _ = self.columns(gene_ids)
        if combine.shape[1] == 0:
            raise InputError("none of the file's genes is in scGPT's vocabulary (gene symbols)")
        counts = sp.csr_matrix(X, dtype=np.float32) @ combine
        counts.sort_indices()
        cells, kept = [], np.zeros(counts.shape[0], dtype=bool)
        for row in range(counts.shape[0]):
            start, end = counts.indptr[row], counts.indptr[row + 1]
            nonzero = counts.data[start:end] != 0
            if not nonzero.any():
                continue
            kept[row] = True
            genes = torch.from_numpy(np.insert(tokens[counts.indices[start:end][nonzero]], 0, self.cls_id)).long()
            expr = torch.from_numpy(np.insert(counts.data[start:end][nonzero], 0, PAD_VALUE)).float()
            expr[1:] = self._binning(row=expr[1:], n_bins=N_BINS)
            if len(genes) > self.max_length:  # helical's DataCollator._sample, keep_first_n_tokens=1
                g = torch.Generator().manual_seed(0)
                chosen = torch.randperm(len(genes) - 1, generator=g)[: self.max_length - 1]
                pick = torch.cat([torch.arange(1), chosen + 1], dim=0)
                genes, expr = genes[pick], expr[pick]
            # binned values are whole numbers (helical's _digitize): exact as int64 beside the tokens
            cells.append(np.stack([genes.numpy(), np.rint(expr.numpy()).astype(np.int64)], axis=1))
        return TokenizedCells(input_ids=cells, lengths=np.array([len(c) for c in cells], dtype=np.int64),
                              cell_ids=np.asarray(cell_ids)[kept], kept=kept, dropped_empty=int((~kept).sum()))
