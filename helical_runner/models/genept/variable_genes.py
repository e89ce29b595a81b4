"""scanpy's seurat_v3 highly-variable genes, computed in two streamed passes over a file's chunks.

helical's GenePT `process_data` calls `sc.pp.highly_variable_genes(adata, flavor="seurat_v3")` on the raw
counts of the whole file (scanpy 1.12's `_highly_variable_genes_seurat_v3`, defaults n_top_genes=2000,
span=0.3, one batch) and keeps only those genes. The rule, step by step as scanpy does it:
  1. each gene's mean and variance over all cells (variance with n-1);
  2. a degree-2 loess (skmisc, span 0.3) of log10(variance) on log10(mean) over the genes of non-zero
     variance gives each an expected standard deviation reg_std (1 for the others);
  3. every count is clipped at reg_std * sqrt(cells) + mean, and the genes are ranked by the variance of
     their clipped counts divided by reg_std^2, largest first; the top 2,000 are kept (all, with fewer).
Step 1 needs every cell before step 3 can start, so pass 1 streams the chunks for the sums and pass 2 streams
them again for the clipped sums; only per-gene vectors are held.

Bit for bit, on purpose: the loess fit moves by ~1e-4 when its inputs move by ~1e-13 (many genes share a
mean), and that moves genes across the 2,000 boundary. So the sums are accumulated in exactly scanpy's order:
its means and variances (fast_array_utils' `sparse_mean_var_minor_axis`) give row r to accumulator slot
r % numba.get_num_threads(), add each slot's rows in row order in float64 (squares taken in the data's own
dtype), then add the slots in order; its clipped sums (`_sum_and_sum_squares_clipped`) run through the
non-zeros in order. `np.add.at` adds in element order too, so a stream of chunks in row order reproduces
helical's numbers on the same machine (the slot count, hence the last bits, is the machine's thread count).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from helical_runner.errors import InputError

N_TOP_GENES = 2000  # scanpy's highly_variable_genes default; helical's GenePT passes none
SPAN = 0.3  # scanpy's seurat_v3 default loess span


class Moments:
    """scanpy's per-column sums and sums of squares, fed chunk by chunk in row order (see the module doc)."""

    def __init__(self, n_columns: int, slots: int | None = None):
        import numba

        self.slots = slots or numba.get_num_threads()
        self.n = 0
        self.sums = np.zeros((self.slots, n_columns), dtype=np.float64)
        self.squares = np.zeros((self.slots, n_columns), dtype=np.float64)

    def add(self, counts: sp.csr_matrix) -> None:
        for slot in range(self.slots):
            rows = np.arange((slot - self.n) % self.slots, counts.shape[0], self.slots)
            if len(rows) == 0:
                continue
            part = counts[rows]
            np.add.at(self.sums[slot], part.indices, part.data.astype(np.float64))
            np.add.at(self.squares[slot], part.indices, (part.data * part.data).astype(np.float64))
        self.n += counts.shape[0]

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """(means, variances with n-1), as fast_array_utils' mean_var(axis=0, correction=1)."""
        sums = np.zeros(self.sums.shape[1])
        squares = np.zeros(self.sums.shape[1])
        for slot in range(self.slots):
            sums = sums + self.sums[slot]
            squares = squares + self.squares[slot]
        means = sums / self.n
        variances = squares / self.n - (sums / self.n) ** 2
        if self.n != 1:
            variances *= self.n / (self.n - 1)
        return means, variances


class ClippedSums:
    """scanpy's clip_square_sum, fed chunk by chunk in row order: (sum of squares, sum) per column of the
    counts clipped at `clip`."""

    def __init__(self, clip: np.ndarray):
        self.clip = clip
        self.squares = np.zeros(len(clip), dtype=np.float64)
        self.sums = np.zeros(len(clip), dtype=np.float64)

    def add(self, counts: sp.csr_matrix) -> None:
        element = np.minimum(counts.data.astype(np.float64), self.clip[counts.indices])
        np.add.at(self.squares, counts.indices, element * element)
        np.add.at(self.sums, counts.indices, element)


def highly_variable(n_chunks: int, counts: Callable[[int], sp.csr_matrix], n_columns: int,
                    n_top: int = N_TOP_GENES, span: float = SPAN, name: str = "the file") -> np.ndarray:
    """Boolean mask [n_columns]: the genes scanpy's seurat_v3 keeps. `counts(i)` gives chunk i's raw counts
    [cells, n_columns] in the file's dtype, chunks in row order (it is called twice per chunk). InputError
    (one line naming `name`) when the file has under two cells or too few varying genes for the loess."""
    from skmisc.loess import loess

    moments = Moments(n_columns)
    for i in range(n_chunks):
        moments.add(counts(i))
    n = moments.n
    if n < 2:
        raise InputError(f"{name}: GenePT's gene selection (scanpy's seurat_v3 highly-variable genes) needs at "
                         f"least 2 cells, the file has {n}")
    mean, var = moments.mean_var()
    not_const = var > 0
    estimated = np.zeros(n_columns, dtype=np.float64)
    try:
        model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
        model.fit()
    except (ValueError, RuntimeError, ArithmeticError) as exc:
        raise InputError(f"{name}: GenePT's gene selection (scanpy's seurat_v3 loess over {int(not_const.sum())} "
                         f"varying genes) failed: {exc}") from None
    estimated[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimated)
    clipped = ClippedSums(reg_std * np.sqrt(n) + mean)
    for i in range(n_chunks):
        clipped.add(counts(i))
    # scanpy's expression, term for term (the order of float operations matters at the 2,000 boundary)
    normalised = (1 / ((n - 1) * np.square(reg_std))) * (
        (n * np.square(mean)) + clipped.squares - 2 * clipped.sums * mean)
    ranks = np.argsort(np.argsort(-normalised))  # as scanpy: argsort twice gives ranks, 0 most variable
    return ranks < n_top
