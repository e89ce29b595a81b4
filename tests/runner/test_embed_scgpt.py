"""scGPT as a model family (issue 22): `embed --model scGPT_CP` gives helical's own scGPT embeddings on the
same cells, reads the architecture from the checkpoint, and refuses a checkpoint that does not load whole.

The stand-in is a random 2-layer, 64-wide scGPT over real human gene symbols in helical's cache layout
(data.synthetic.write_tiny_scgpt). helical's scGPT constructor calls its downloader, which asks helical's bucket
for every file even when cached (and deletes a cached file when the check fails): with no network here, the
reference side replaces that one class with a no-op; nothing else of helical's is replaced.
"""

from __future__ import annotations

import json

import anndata
import numpy as np
import pytest
import torch

from conftest import real_file, run_cli

pytestmark = pytest.mark.slow
PERTURB = "cellxgene_schema7_perturb_500x2000.h5ad"


def helical_scgpt(monkeypatch, batch_size: int = 1):
    import helical.models.scgpt.model as helical_model
    from helical.models.scgpt import scGPT, scGPTConfig

    class NoDownload:  # helical's downloader needs its bucket (see the module docstring)
        def download_via_name(self, name):
            pass

    monkeypatch.setattr(helical_model, "Downloader", NoDownload)
    return scGPT(configurer=scGPTConfig(batch_size=batch_size, nlayers=2, nheads=4, embsize=64, d_hid=64,
                                        device="cpu"))


def symbols_only(tmp_path, source, genes_per_cell: int | None = None):
    """The file's genes whose feature_name is a symbol (helical maps the rest with a table from its bucket)."""
    adata = anndata.read_h5ad(source)
    adata = adata[:, ~adata.var["feature_name"].astype(str).str.startswith("ENSG")].copy()
    path = tmp_path / "symbols.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_scgpt_embeddings_equal_helicals_on_a_real_file(scgpt_stand_in, tmp_path, monkeypatch):
    path, adata = symbols_only(tmp_path, real_file(PERTURB))
    result = run_cli("embed", "--model", "scGPT_CP", "--data", str(path), "--gene-column", "feature_name",
                     "--output", str(tmp_path / "out"), "--precision", "fp32", "--cells-per-chunk", "150")
    assert result.returncode == 0, result.stderr[-3000:]
    out = anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad")
    ours = out.obsm["X_scgpt"]
    model = helical_scgpt(monkeypatch)
    theirs = model.get_embeddings(model.process_data(adata, gene_names="feature_name"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert out.obs["leiden"].notna().all() and np.isfinite(out.obsm["X_umap"]).all()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"] == {"name": "scGPT_CP", "family": "scgpt", "embedding_key": "X_scgpt",
                               "embedding_size": 64}


def test_cells_over_1200_genes_are_sampled_as_helical_samples_them(scgpt_stand_in, tmp_path, monkeypatch):
    """Cells of ~2,000 expressed genes: <cls> and 1,199 genes drawn as helical's collator draws them."""
    from helical_runner.data.synthetic import make_h5ad

    source = make_h5ad(tmp_path / "long.h5ad", n_cells=12, n_genes=4000, n_types=2, genes_per_cell=3000, seed=2)
    path, adata = symbols_only(tmp_path, source)
    assert (np.diff(adata.X.tocsr().indptr) > 1200).all()
    result = run_cli("embed", "--model", "scGPT_CP", "--data", str(path), "--gene-column", "feature_name",
                     "--output", str(tmp_path / "out"), "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    ours = anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad").obsm["X_scgpt"]
    model = helical_scgpt(monkeypatch)
    theirs = model.get_embeddings(model.process_data(adata, gene_names="feature_name"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_that_does_not_load_whole_is_refused_with_one_line(scgpt_stand_in, tmp_path):
    """helical would build 12 layers of width 512 and skip every weight of another shape; here a checkpoint
    missing a layer's weights is refused, naming what is missing, and nothing is embedded."""
    from helical_runner.models.scgpt import files

    weights = scgpt_stand_in / "best_model.pt"
    original = weights.read_bytes()
    state = torch.load(weights, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("transformer_encoder.layers.1.linear2")}
    torch.save(state, weights)
    try:
        result = run_cli("embed", "--model", "scGPT_CP", "--data", str(real_file(PERTURB)),
                         "--output", str(tmp_path / "out"))
    finally:
        weights.write_bytes(original)
    assert result.returncode == 65
    [line] = [l for l in result.stderr.splitlines() if l.startswith("helical-runner: error:")]
    assert "does not load as the network its shapes describe (2 layers, width 64)" in line
    assert "2 weights missing" in line and "transformer_encoder.layers.1.linear2" in line
    assert files.architecture(files.read_state(weights), scgpt_stand_in).nlayers == 2


def test_info_lists_scgpt_with_its_checkpoints_width(scgpt_stand_in):
    listing = json.loads(run_cli("info").stdout)
    [row] = [r for r in listing["models"] if r["family"] == "scgpt"]
    assert row == {"family": "scgpt", "name": "scGPT_CP", "embedding_size": 64, "input_size": 1200,
                   "fine_tunes": True, "cached": True, "missing": [], "runs_here": True, "why_not": ""}


def test_info_describes_one_scgpt_from_its_checkpoint(scgpt_stand_in):
    result = run_cli("info", "--model", "scGPT_CP")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert (info["model"], info["family"], info["fine_tunes"], info["cached"]) == ("scGPT_CP", "scgpt", True, True)
    assert (info["layers"], info["hidden_size"], info["attention_heads"]) == (2, 64, 4)
    assert info["vocabulary_size"] == len(json.loads((scgpt_stand_in / "vocab.json").read_text()))
    assert info["model_dir"] == str(scgpt_stand_in) and info["parameters"] > 100_000
