"""Geneformer's rank-value tokenization of one chunk of cells, token-for-token equal to helical's.

helical's `TranscriptomeTokenizer.tokenize_anndata` + `create_dataset` need a whole AnnData and build a
HuggingFace Dataset; here the same arithmetic runs on one CSR chunk and returns plain arrays, so chunks
can be tokenized off the training thread. The expressions below are helical's own, in the same order and
dtypes: `np.argsort` is not stable, so equal scores must be equal bit for bit to rank the same way
(tests/test_tokenizer.py checks against helical on data with ties).

Differences, by design: duplicate Ensembl ids are an input error (helical sums them), and cells with no
expressed vocabulary gene are dropped and counted (helical would emit a `<cls><eos>` cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from helical_runner.errors import InputError
from helical_runner.h5ad_io import ENSEMBL_ID
from helical_runner.model_files import ModelFiles, read_json

TARGET_SUM = 10_000  # helical's normalisation target (counts per cell)


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
        self.symbol_map = {k.upper(): v for k, v in mapping.items() if v in self.token_dict}
        self._columns_cache: tuple[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def known_genes(self, ids) -> int:
        """How many of these gene ids the model's vocabulary knows (after symbol mapping)."""
        return len(self.vocabulary_columns(ids)[0])

    def vocabulary_columns(self, gene_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(column positions, their tokens, their median normalisers) of the genes in the vocabulary."""
        key = tuple(gene_ids)
        if self._columns_cache is not None and self._columns_cache[0] == key:
            return self._columns_cache[1]
        resolved = [g if g in self.token_dict or ENSEMBL_ID.match(g) else self.symbol_map.get(g.upper(), "")
                    for g in key]
        positions = np.where([gene in self.token_dict for gene in resolved])[0]
        in_vocab = [resolved[i] for i in positions]
        if len(set(in_vocab)) != len(in_vocab):
            duplicates = sorted({g for g in in_vocab if in_vocab.count(g) > 1})[:3]
            raise InputError(f"duplicate gene ids in var (e.g. {', '.join(duplicates)}): each gene must appear once")
        missing_median = [g for g in in_vocab if g not in self.median_dict]
        if missing_median:
            raise InputError(f"model files: genes without a median in the median dictionary (e.g. {missing_median[0]})")
        tokens = np.array([self.token_dict[g] for g in in_vocab])
        medians = np.array([self.median_dict[g] for g in in_vocab])
        self._columns_cache = (key, (positions, tokens, medians))
        return positions, tokens, medians

    def tokenize(self, X: sp.csr_matrix, gene_ids, cell_ids, n_counts=None) -> TokenizedCells:
        """Rank-encode each cell: genes by descending count / cell total * 10,000 / gene median."""
        positions, tokens, medians = self.vocabulary_columns(gene_ids)
        if n_counts is None:
            n_counts = X.sum(axis=1)  # over all genes, as helical does
        X_norm = (X[:, positions] / np.asarray(n_counts).reshape(-1, 1)) * TARGET_SUM / medians.reshape(1, -1)
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
