"""Nicheformer as a model family: `embed --model theislab/Nicheformer` gives helical's own Nicheformer embeddings
on the same cells (context tokens and the 1,500-token cut included), and refuses weights that do not load
whole or a file with no gene in its vocabulary with one line.

The stand-in is a random 2-layer, 32-wide Nicheformer over real human Ensembl ids in helical's cache layout
(data.synthetic.write_tiny_nicheformer). helical's Nicheformer fetches its files with `download_via_link`,
which skips files that exist, so the reference side runs helical unpatched.
"""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest

from conftest import real_file, run_cli

pytestmark = pytest.mark.slow
PERTURB = "cellxgene_schema7_perturb_500x2000.h5ad"
NAME = "theislab/Nicheformer"


def helical_nicheformer(adata: anndata.AnnData) -> np.ndarray:
    from helical.models.nicheformer import Nicheformer, NicheformerConfig

    model = Nicheformer(NicheformerConfig(batch_size=16))
    return model.get_embeddings(model.process_data(adata))


def embed(tmp_path, path, *flags) -> anndata.AnnData:
    result = run_cli("embed", "--model", NAME, "--data", str(path), "--output", str(tmp_path / "out"),
                     "--precision", "fp32", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad")


def test_nicheformer_embeddings_equal_helicals_on_a_real_file(nicheformer_stand_in, tmp_path):
    """A CELLxGENE screen (Ensembl ids, an `assay` helical's tokenizer doesn't know: a [PAD] context token)."""
    adata = anndata.read_h5ad(real_file(PERTURB))[:160].copy()
    adata.write_h5ad(tmp_path / "cells.h5ad")
    out = embed(tmp_path, tmp_path / "cells.h5ad", "--cells-per-chunk", "70")
    theirs = helical_nicheformer(anndata.read_h5ad(tmp_path / "cells.h5ad"))
    assert out.obsm["X_nicheformer"].shape == theirs.shape == (160, 32)
    np.testing.assert_allclose(out.obsm["X_nicheformer"], theirs, rtol=1e-4, atol=1e-5)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"] == {"name": NAME, "family": "nicheformer", "embedding_key": "X_nicheformer",
                               "embedding_size": 32}
    assert report["genes"]["in_file"] == 2000 and 1900 < report["genes"]["tokens"] <= 2000


def test_context_tokens_and_cells_over_1500_genes_as_helical_makes_them(nicheformer_stand_in, tmp_path):
    """specie/assay/modality columns put three context tokens first (helical's ids: human 5, 10x 3' v3 11,
    dissociated 3) and cells of ~1,800 genes are cut to 1,497 of them, most expressed first."""
    from helical_runner.data.synthetic import make_h5ad
    from helical_runner.models.nicheformer.files import load_tokenizer
    from helical_runner.models.nicheformer.tokenizer import NicheformerTokenizer, vocabulary_genes

    source = make_h5ad(tmp_path / "long.h5ad", n_cells=40, n_genes=3000, genes_per_cell=2600, seed=5)
    adata = anndata.read_h5ad(source)
    adata.obs["specie"] = pd.Categorical(["human"] * 40)
    adata.obs["assay"] = pd.Categorical(["10x 3' v3"] * 30 + ["Smart-seq v4"] * 10)
    adata.obs["modality"] = pd.Categorical(["dissociated"] * 40)
    adata.write_h5ad(tmp_path / "context.h5ad")
    assert (np.diff(adata.X.tocsr().indptr) > 1500).all()
    ours = embed(tmp_path, tmp_path / "context.h5ad", "--cells-per-chunk", "25").obsm["X_nicheformer"]
    theirs = helical_nicheformer(anndata.read_h5ad(tmp_path / "context.h5ad"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    helical = load_tokenizer(nicheformer_stand_in)
    tokens = NicheformerTokenizer(vocabulary_genes(helical.get_vocab()), helical).tokenize(
        adata.X, adata.var_names, adata.obs)
    assert tokens.input_ids[0][:3].tolist() == [5, 11, 3] and tokens.input_ids[-1][:3].tolist() == [5, 18, 3]
    assert all(len(ids) == 1500 and mask.all() for ids, mask in zip(tokens.input_ids, tokens.attention_mask))


def test_weights_that_do_not_load_whole_are_one_line(nicheformer_stand_in, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = nicheformer_stand_in / "model.safetensors"
    original = weights.read_bytes()
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if ".layers.1.linear2." not in k}, weights, metadata={"format": "pt"})
    try:
        result = run_cli("embed", "--model", NAME, "--data", str(real_file(PERTURB)), "--output", str(tmp_path / "out"))
    finally:
        weights.write_bytes(original)
    assert result.returncode == 65
    [line] = [l for l in result.stderr.splitlines() if l.startswith("helical-runner: error:")]
    assert "do not load as its config.json describes (2 layers, width 32): 2 weights missing" in line
    assert "layers.1.linear2" in line


def test_a_file_with_no_gene_in_the_vocabulary_is_one_line(nicheformer_stand_in, tmp_path):
    import scipy.sparse as sp

    adata = anndata.AnnData(sp.csr_matrix(np.ones((5, 3), dtype=np.float32)))
    adata.var_names = ["ENSG99999999991", "ENSG99999999992", "ENSG99999999993"]
    adata.write_h5ad(tmp_path / "strange.h5ad")
    result = run_cli("embed", "--model", NAME, "--data", str(tmp_path / "strange.h5ad"),
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 65
    [line] = [l for l in result.stderr.splitlines() if l.startswith("helical-runner: error:")]
    assert f"none of its 3 genes is in {NAME}'s vocabulary" in line


def test_info_lists_nicheformer_with_its_configs_width(nicheformer_stand_in):
    listing = json.loads(run_cli("info").stdout)
    [row] = [r for r in listing["models"] if r["family"] == "nicheformer"]
    assert row == {"family": "nicheformer", "name": NAME, "embedding_size": 32, "input_size": 1500,
                   "fine_tunes": False, "cached": True, "missing": [], "runs_here": True, "why_not": ""}
    assert "nicheformer" not in {r["family"] for r in listing["not_supported"]}
