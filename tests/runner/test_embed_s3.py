"""`embed` reads every family's input from S3 in place and writes its outputs there, with the same
embeddings as from a local path (each family's own test compares the local run with helical's)."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

from conftest import BUCKET, run_cli
from helical_runner.data.synthetic import make_h5ad

pytestmark = pytest.mark.slow

# family: (model name, its stand-in fixture, flags; the file has Ensembl var names and symbols in feature_name)
FAMILIES = {"scgpt": ("scGPT_CP", "scgpt_stand_in", ["--gene-column", "feature_name"]),
            "genept": ("gpt3.5", "genept_table", []),
            "nicheformer": ("theislab/Nicheformer", "nicheformer_stand_in", [])}


@pytest.mark.parametrize("family", FAMILIES)
def test_embed_from_s3_equals_embed_from_a_local_path(family, s3, request, tmp_path):
    model, stand_in, flags = FAMILIES[family]
    request.getfixturevalue(stand_in)
    data = make_h5ad(tmp_path / "cells.h5ad", n_cells=150, n_genes=2500, n_types=3, genes_per_cell=300, seed=8)
    s3.upload_file(str(data), BUCKET, f"incoming/embed-{family}.h5ad")
    remote = run_cli("embed", "--model", model, "--data", f"s3://{BUCKET}/incoming/embed-{family}.h5ad",
                     "--output", f"s3://{BUCKET}/embed/{family}", "--cells-per-chunk", "60", *flags)
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = run_cli("embed", "--model", model, "--data", str(data), "--output", str(tmp_path / "out"),
                    "--cells-per-chunk", "60", *flags)
    assert local.returncode == 0, local.stderr[-3000:]
    s3.download_file(BUCKET, f"embed/{family}/embeddings.h5ad", str(tmp_path / "remote.h5ad"))
    ours = anndata.read_h5ad(tmp_path / "remote.h5ad")
    theirs = anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad")
    key = f"X_{family}"
    assert ours.n_obs == 150 and list(ours.obs_names) == list(theirs.obs_names)
    np.testing.assert_allclose(ours.obsm[key], theirs.obsm[key], rtol=1e-5, atol=1e-6)
    assert ours.obs["leiden"].notna().all()
