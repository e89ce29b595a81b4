"""Our chunk tokenizer gives helical's token sequences exactly, ties and truncation included."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helical_reference import helical_tokens
from helical_runner.models.geneformer.files import ModelFiles
from helical_runner.models.geneformer.tokenizer import GeneformerTokenizer


def _files(tmp_path, genes, medians, special=True, input_size=4096, symbols=None) -> ModelFiles:
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3} if special else {"<pad>": 0, "<mask>": 1}
    tokens.update({g: i + len(tokens) for i, g in enumerate(genes)})
    paths = {}
    for name, content in (("token_dictionary.json", tokens), ("gene_median_dictionary.json", medians),
                          ("ensembl_mapping_dict.json", {**{g: g for g in genes}, **(symbols or {})})):
        paths[name] = tmp_path / name
        paths[name].write_text(json.dumps(content))
    return ModelFiles(name="test", version="v2" if special else "v1", input_size=input_size, special_token=special,
                      model_dir=tmp_path, token_dictionary=paths["token_dictionary.json"],
                      gene_median_dictionary=paths["gene_median_dictionary.json"],
                      ensembl_mapping=paths["ensembl_mapping_dict.json"])


def _adata(n_cells=300, n_genes=400, seed=0, with_unknown=True):
    rng = np.random.default_rng(seed)
    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    # small integer counts on a shared median make many exact ties in the ranking
    X = sp.random(n_cells, n_genes, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    X.data = rng.integers(1, 4, size=X.nnz).astype(np.float32)
    var_ids = genes + (["ENSG99999999999"] if with_unknown else [])  # a gene outside the vocabulary
    if with_unknown:
        X = sp.hstack([X, sp.csr_matrix(np.ones((n_cells, 1), dtype=np.float32))], format="csr")
    adata = anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                            var=pd.DataFrame(index=var_ids))
    adata.var["ensembl_id"] = adata.var_names
    return adata, genes


@pytest.mark.parametrize("special, input_size", [(True, 4096), (True, 40), (False, 2048), (False, 25)])
def test_tokens_match_helical_exactly(tmp_path, special, input_size):
    adata, genes = _adata()
    medians = {g: (1.0 if i % 2 else 2.5) for i, g in enumerate(genes)}  # two median values: ties galore
    files = _files(tmp_path, genes, medians, special, input_size)
    ours = GeneformerTokenizer(files).tokenize(adata.X, adata.var["ensembl_id"], adata.obs_names)
    theirs = helical_tokens(files, adata)
    assert ours.dropped_empty == 0 and len(ours.input_ids) == len(theirs) == adata.n_obs
    for mine, helical in zip(ours.input_ids, theirs):
        assert np.array_equal(mine, helical)
    assert max(ours.lengths) == min(input_size, max(len(t) for t in theirs))


def test_cells_without_vocabulary_genes_are_dropped_and_counted(tmp_path):
    adata, genes = _adata(n_cells=5)
    X = adata.X.tolil()
    X[2, :-1] = 0  # cell 2 expresses only the unknown gene
    X = X.tocsr()
    X.eliminate_zeros()
    files = _files(tmp_path, genes, {g: 1.0 for g in genes})
    ours = GeneformerTokenizer(files).tokenize(X, adata.var["ensembl_id"], adata.obs_names)
    assert ours.dropped_empty == 1
    assert list(ours.cell_ids) == ["c0", "c1", "c3", "c4"]


def _pbmc_like(tmp_path, n_cells=200, seed=0):
    """A 10x-style file: real symbols as var names, two of which name one Ensembl id (readthrough genes:
    PAK6 and BUB1B-PAK6 are ENSG00000137843 in NCBI's annotation), plus a symbol no model knows."""
    from helical_runner.data.synthetic import panel

    pairs = {"PAK6": "ENSG00000137843", "BUB1B-PAK6": "ENSG00000137843", "GNMT": "ENSG00000124713",
             "CNPY3-GNMT": "ENSG00000124713"}
    genes = panel(300)
    genes = genes[~genes["ensembl_id"].isin(set(pairs.values()))]  # the pairs are the only shared ids
    symbols = list(genes["symbol"]) + list(pairs) + ["NOT-A-GENE"]
    ids = list(dict.fromkeys(list(genes["ensembl_id"]) + list(pairs.values())))
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, len(symbols), density=0.3, format="csr", random_state=seed, dtype=np.float32)
    X.data = rng.integers(1, 4, size=X.nnz).astype(np.float32)  # small counts: ties in the ranking
    adata = anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                            var=pd.DataFrame(index=symbols))
    adata.var["ensembl_id"] = adata.var_names  # what helical's mapping looks up: the symbols
    mapping = {**{s.upper(): i for s, i in zip(genes["symbol"], genes["ensembl_id"])}, **pairs}  # Geneformer's keys
    medians = {g: (1.0 if i % 2 else 2.5) for i, g in enumerate(ids)}
    return adata, _files(tmp_path, ids, medians, symbols=mapping)


@pytest.mark.parametrize("input_size", [4096, 40])
def test_genes_sharing_an_id_are_summed_as_helical_does(tmp_path, input_size):
    adata, files = _pbmc_like(tmp_path)
    files = ModelFiles(**{**files.__dict__, "input_size": input_size})
    tokenizer = GeneformerTokenizer(files)
    ours = tokenizer.tokenize(adata.X, adata.var_names, adata.obs_names)
    theirs = helical_tokens(files, adata, collapse=True)
    assert len(theirs[0]) and tokenizer.columns(adata.var_names).collapsed == 2
    assert len(ours.input_ids) == len(theirs) == adata.n_obs
    for mine, helical in zip(ours.input_ids, theirs):
        assert np.array_equal(mine, helical)


def test_an_id_listed_twice_is_one_summed_gene(tmp_path):
    adata, genes = _adata(n_cells=3, with_unknown=False)
    ids = list(adata.var["ensembl_id"])
    ids[5] = ids[4]
    files = _files(tmp_path, genes, {g: 1.0 for g in genes})
    tokenizer = GeneformerTokenizer(files)
    ours = tokenizer.tokenize(adata.X, ids, adata.obs_names)
    token = tokenizer.token_dict[ids[4]]
    assert tokenizer.columns(ids).collapsed == 1
    assert all(list(cell).count(token) <= 1 for cell in ours.input_ids)  # one token, never two
