"""GenePT as a model family: `embed --model gpt3.5` gives helical's own GenePT embeddings on the same cells,
choosing the same 2,000 highly-variable genes from a stream of chunks, and refuses a file none of whose genes
is in GenePT's table with one line.

The stand-in is a random 64-wide table over real human gene symbols where helical looks for GenePT's
(data.synthetic.write_tiny_genept). helical's GenePT constructor calls its downloader, which asks helical's
bucket about the table even when it is cached (and deletes it when the check fails): with no network here,
the reference side replaces that one class with a no-op; nothing else of helical's is replaced.
"""

from __future__ import annotations

import json

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import real_file, run_cli

pytestmark = pytest.mark.slow
PERTURB = "cellxgene_schema7_perturb_500x2000.h5ad"


def helical_genept(monkeypatch, adata: anndata.AnnData) -> np.ndarray:
    """helical's GenePT process_data + get_embeddings on `adata` (symbols as var_names)."""
    import helical.models.genept.model as helical_model
    from helical.models.genept import GenePT, GenePTConfig

    class NoDownload:  # helical's downloader needs its bucket (see the module docstring)
        def download_via_name(self, name):
            pass

    monkeypatch.setattr(helical_model, "Downloader", NoDownload)
    model = GenePT(configurer=GenePTConfig())
    return np.asarray(model.get_embeddings(model.process_data(adata)))


def with_symbols_as_index(source, path):
    """The file with its symbols (var['feature_name']) as var_names, genes named by an Ensembl id left out."""
    adata = anndata.read_h5ad(source)
    adata = adata[:, ~adata.var["feature_name"].astype(str).str.startswith("ENSG")].copy()
    adata.var_names = adata.var["feature_name"].astype(str).to_numpy()
    adata.write_h5ad(path)
    return path, adata


def embed(tmp_path, path, *flags) -> anndata.AnnData:
    result = run_cli("embed", "--model", "gpt3.5", "--data", str(path), "--output", str(tmp_path / "out"),
                     "--precision", "fp32", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad")


def test_genept_embeddings_equal_helicals_on_a_real_file(genept_table, tmp_path, monkeypatch):
    path, adata = with_symbols_as_index(real_file(PERTURB), tmp_path / "symbols.h5ad")
    out = embed(tmp_path, path, "--cells-per-chunk", "150")
    ours = out.obsm["X_genept"]
    theirs = helical_genept(monkeypatch, adata)
    assert ours.shape == theirs.shape == (500, 64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    assert out.obs["leiden"].notna().all() and np.isfinite(out.obsm["X_umap"]).all()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"] == {"name": "gpt3.5", "family": "genept", "embedding_key": "X_genept",
                               "embedding_size": 64}
    assert report["genes"]["highly_variable"] == adata.n_vars  # under 2,000 genes: scanpy keeps them all


def test_the_2000_highly_variable_genes_are_chosen_from_a_stream_as_scanpy_chooses_them(genept_table, tmp_path,
                                                                                        monkeypatch):
    """4,000 genes in chunks of 70 cells: the same genes as helical's whole-file seurat_v3, so the same
    embeddings (a gene more or less across the boundary would move every cell's)."""
    from helical_runner.data.synthetic import make_h5ad

    source = make_h5ad(tmp_path / "wide.h5ad", n_cells=400, n_genes=4000, genes_per_cell=500, seed=3)
    path, adata = with_symbols_as_index(source, tmp_path / "symbols.h5ad")
    out = embed(tmp_path, path, "--cells-per-chunk", "70")
    theirs = helical_genept(monkeypatch, adata)
    np.testing.assert_allclose(out.obsm["X_genept"], theirs, rtol=1e-4, atol=1e-5)
    genes = json.loads((tmp_path / "out" / "report.json").read_text())["genes"]
    assert genes["highly_variable"] == 2000 and genes["in_file"] == 4000
    assert 1900 < genes["embedded_genes"] <= 2000  # the chosen genes with a row in the table


def test_streamed_selection_is_scanpys_for_any_chunking():
    """variable_genes.highly_variable against scanpy's own function, on counts with many tied means."""
    import scanpy as sc

    from helical_runner.models.genept.variable_genes import highly_variable

    rng = np.random.default_rng(0)
    X = sp.random(301, 3000, density=0.08, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 6).astype(np.float32)
    expected = sc.pp.highly_variable_genes(anndata.AnnData(X), flavor="seurat_v3", inplace=False)["highly_variable"]
    for rows in (301, 64, 7):
        starts = list(range(0, 301, rows))
        chosen = highly_variable(len(starts), lambda i: X[starts[i]:starts[i] + rows], X.shape[1])
        assert (chosen == expected.to_numpy()).all(), rows


def test_ensembl_ids_are_looked_up_by_their_symbols(genept_table, tmp_path, monkeypatch):
    """A file of Ensembl ids (the synthetic CELLxGENE layout): the runner maps them to symbols itself, and its
    embeddings equal helical's on the same counts with those symbols."""
    from helical_runner.data.synthetic import make_h5ad

    source = make_h5ad(tmp_path / "ids.h5ad", n_cells=150, n_genes=2500, genes_per_cell=300, seed=4)
    ours = embed(tmp_path, source).obsm["X_genept"]
    _, adata = with_symbols_as_index(source, tmp_path / "symbols.h5ad")
    np.testing.assert_allclose(ours, helical_genept(monkeypatch, adata), rtol=1e-4, atol=1e-5)


def test_a_file_with_no_gene_in_the_table_is_one_line(genept_table, tmp_path):
    adata = anndata.AnnData(sp.csr_matrix(np.ones((5, 3), dtype=np.float32)))
    adata.var_names = ["NOT_A_GENE_1", "NOT_A_GENE_2", "NOT_A_GENE_3"]
    adata.write_h5ad(tmp_path / "strange.h5ad")
    result = run_cli("embed", "--model", "gpt3.5", "--data", str(tmp_path / "strange.h5ad"),
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 65
    [line] = [l for l in result.stderr.splitlines() if l.startswith("helical-runner: error:")]
    assert "none of its 3 genes is in GenePT gpt3.5's table" in line


def test_info_lists_genept_with_its_tables_width(genept_table):
    listing = json.loads(run_cli("info").stdout)
    [row] = [r for r in listing["models"] if r["family"] == "genept"]
    assert row == {"family": "genept", "name": "gpt3.5", "embedding_size": 64, "input_size": 2000,
                   "fine_tunes": False, "cached": True, "missing": [], "runs_here": True, "why_not": ""}
    assert "genept" not in {r["family"] for r in listing["not_supported"]}


def test_a_table_that_is_not_genepts_layout_is_one_input_error(tmp_path):
    from helical_runner.errors import InputError
    from helical_runner.models.genept.files import read_table

    cases = {"not json": "{", "a list": "[1, 2]", "no embeddings": '{"ACTB": {"summary": "x"}}',
             "two widths": '{"ACTB": {"embeddings": [1, 2]}, "GAPDH": {"embeddings": [1]}}'}
    expected = {"not json": "is not JSON", "a list": "is not a JSON object of genes",
                "no embeddings": "gene 'ACTB' has no 'embeddings' list", "two widths": "gene 'GAPDH' has 1 numbers"}
    for case, text in cases.items():
        (tmp_path / "table.json").write_text(text)
        with pytest.raises(InputError, match=expected[case]):
            read_table(tmp_path / "table.json")


def test_genes_of_one_symbol_are_summed_and_genes_without_one_leave_the_totals(genept_table):
    """Two file genes named ACTB are one column; an Ensembl id no table knows has no column (helical's
    ensure_gene_symbols drops it, so it counts in no cell's total either)."""
    from helical_runner.models.genept import GeneColumns
    from helical_runner.models.genept.files import read_table, table_path

    columns = GeneColumns(read_table(table_path()), ["ACTB", "GAPDH", "ACTB", "ENSG99999999999"])
    assert columns.symbols == ["ACTB", "GAPDH"] and columns.collapsed == 1
    counts = columns.counts(sp.csr_matrix(np.array([[1, 2, 3, 4]], dtype=np.float32)))
    assert counts.toarray().tolist() == [[4.0, 2.0]]
    assert columns.summary("gpt3.5", "f.h5ad") == {"in_file": 4, "in_vocabulary": 3, "tokens": 2, "collapsed": 1}
