"""Bad .h5ad uploads, one per way a lab's file can be wrong: the runner tests feed them to the CLI, the
end-to-end tests upload them to incoming/ (`python tests/runner/bad_inputs.py OUTDIR` writes them all, and
reasons.json: name -> the words its reason must contain).

Each entry: name -> (bytes from a valid file's bytes, the words the one-line reason must contain).
Genes are real human ones the stand-in model knows (helical_runner.data.synthetic.panel), so only the intended
fault is wrong.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helical_runner.data.synthetic import make_h5ad, panel


def h5ad_bytes(X, genes=None, obs=None) -> bytes:
    n_cells, n_genes = X.shape
    genes = genes if genes is not None else list(panel(n_genes)["ensembl_id"])
    obs = obs if obs is not None else pd.DataFrame(
        {"cell_type": pd.Categorical(["B cell", "T cell"] * (n_cells // 2) + ["B cell"] * (n_cells % 2))},
        index=[f"c{i}" for i in range(n_cells)])
    adata = anndata.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
    with tempfile.TemporaryDirectory() as tmp:
        adata.write_h5ad(Path(tmp) / "x.h5ad")
        return (Path(tmp) / "x.h5ad").read_bytes()


def counts(n_cells=40, n_genes=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.0, size=(n_cells, n_genes)).astype(np.float32)


def with_value(value) -> np.ndarray:
    X = counts()
    X[3, 7] = value
    return X


def cells_index(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


BAD_FILES = {
    "not-hdf5": (lambda ok: b"cell,gene,count\nc1,CD4,3\n", "is not a readable .h5ad (HDF5) file"),
    "truncated": (lambda ok: ok[: len(ok) // 2], "truncated"),
    "zero-cells": (lambda ok: h5ad_bytes(np.zeros((0, 50), dtype=np.float32)), "has zero cells"),
    "zero-genes": (lambda ok: h5ad_bytes(np.zeros((10, 0), dtype=np.float32), genes=[]), "has zero genes"),
    "non-integer": (lambda ok: h5ad_bytes(with_value(0.37)), "non-integer values such as 0.37 (cell 'c3')"),
    "negative": (lambda ok: h5ad_bytes(with_value(-2)), "negative counts (cell 'c3')"),
    "nan": (lambda ok: h5ad_bytes(with_value(np.nan)), "NaN or infinite values (cell 'c3')"),
    "mouse-genes": (lambda ok: h5ad_bytes(counts(), genes=[f"ENSMUSG{i:011d}" for i in range(50)]),
                    "none of its 50 genes is in gf-12L-38M-i4096's vocabulary"),
    "unmapped-symbols": (lambda ok: h5ad_bytes(counts(), genes=[f"NOTAGENE{i}" for i in range(50)]),
                         "none of its 50 genes is in"),
    "missing-label": (lambda ok: h5ad_bytes(counts(), obs=pd.DataFrame({"celltype": ["B cell", "T cell"] * 20},
                                                                       index=cells_index(40))),
                      "no obs column 'cell_type' usable as labels"),
    "single-class": (lambda ok: h5ad_bytes(counts(), obs=pd.DataFrame({"cell_type": ["B cell"] * 40},
                                                                      index=cells_index(40))),
                     "has 1 class(es) (B cell); a classifier needs at least 2"),
}


def valid_bytes(folder: Path) -> bytes:
    return make_h5ad(folder / "ok.h5ad", n_cells=60, n_genes=300, n_types=2).read_bytes()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ok = valid_bytes(out)
    (out / "ok.h5ad").unlink()
    for name, (make, _) in BAD_FILES.items():
        (out / f"{name}.h5ad").write_bytes(make(ok))
    (out / "reasons.json").write_text(json.dumps({name: reason for name, (_, reason) in BAD_FILES.items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
