"""scGPT fine-tunes and predicts through the runner's own loop (issue 22): the model folder it saves is scored
by helical's own scGPTFineTuningModel as `predict` scores it, a killed run resumes exactly, and two
data-parallel processes end where one does.

The stand-in is conftest's random 2-layer, 64-wide scGPT over real human gene symbols; the reference side
replaces helical's downloader with a no-op, as test_embed_scgpt.py explains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, wait_for
from helical_runner.data.synthetic import make_h5ad
from test_embed_scgpt import symbols_only

pytestmark = pytest.mark.slow


def finetune_args(data, output, *extra: str) -> list[str]:
    return ["finetune", "--model", "scGPT_CP", "--data", str(data), "--label-column", "cell_type",
            "--gene-column", "feature_name", "--output", str(output), "--precision", "fp32", "--batch-size", "16",
            "--lr", "2e-3", "--epochs", "2", "--cells-per-chunk", "120", *extra]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three cell types with marker genes, scGPT-readable symbols only (helical maps Ensembl ids online)."""
    tmp = tmp_path_factory.mktemp("scgpt-ft")
    source = make_h5ad(tmp / "cells.h5ad", n_cells=360, n_genes=1200, n_types=3, genes_per_cell=150, seed=5)
    return symbols_only(tmp, source)


def test_scgpt_finetunes_and_predicts_as_helicals_finetuning_model_scores(scgpt_stand_in, labelled, tmp_path,
                                                                         monkeypatch):
    path, adata = labelled
    result = run_cli(*finetune_args(path, tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["inputs"]["model"] == {"name": "scGPT_CP", "version": "scGPT_CP", "family": "scgpt"}
    assert report["genes"]["tokens"] > 1000 and report["steps"] > 30
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["accuracy"] > 0.6  # three marker-separated types: chance is 1/3
    model = tmp_path / "run" / "model"
    meta = json.loads((model / "classifier.json").read_text())
    assert meta["family"] == "scgpt" and set(meta["labels"]) == set(adata.obs["cell_type"].astype(str))

    predicted = run_cli("predict", "--model", str(model), "--data", str(path), "--gene-column", "feature_name",
                        "--output", str(tmp_path / "pred"), "--precision", "fp32")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    ours = anndata.read_h5ad(tmp_path / "pred" / "predictions.h5ad")
    assert json.loads((tmp_path / "pred" / "report.json").read_text())["model"]["family"] == "scgpt"

    # helical's own fine-tuning model with the saved encoder and head, one cell a batch (no padding averaged in)
    import helical.models.scgpt.model as helical_model
    from helical.models.scgpt import scGPTConfig, scGPTFineTuningModel
    from safetensors.torch import load_file

    class NoDownload:
        def download_via_name(self, name):
            pass

    monkeypatch.setattr(helical_model, "Downloader", NoDownload)
    reference = scGPTFineTuningModel(
        scGPT_config=scGPTConfig(batch_size=1, nlayers=2, nheads=4, embsize=64, d_hid=64, device="cpu"),
        fine_tuning_head="classification", output_size=len(meta["labels"]))
    reference.model.load_state_dict(torch.load(model / "best_model.pt", weights_only=True), strict=True)
    head = load_file(model / "classifier.safetensors")
    reference.fine_tuning_head.linear.load_state_dict({k.removeprefix("classifier."): v for k, v in head.items()})
    logits = reference.get_outputs(reference.process_data(adata, gene_names="feature_name"))
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    theirs = pd.Series(np.asarray(meta["labels"])[probabilities.argmax(axis=1)], index=adata.obs_names)
    column = f"predicted_{meta['label_column']}"
    assert (ours.obs[column].astype(str) == theirs.reindex(ours.obs_names)).all()
    np.testing.assert_allclose(ours.obs["prediction_confidence"], probabilities.max(axis=1), rtol=1e-4, atol=1e-5)


def test_killed_scgpt_finetune_resumes_from_its_checkpoint(scgpt_stand_in, labelled, tmp_path):
    path, _ = labelled
    straight = run_cli(*finetune_args(path, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    child = subprocess.Popen([sys.executable, "-m", "helical_runner", *finetune_args(path, tmp_path / "killed")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        wait_for(lambda: (tmp_path / "killed" / "checkpoint.pt").exists(), timeout=300, interval=0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (tmp_path / "killed" / "report.json").exists()
    resumed = run_cli(*finetune_args(path, tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stderr
    a, b = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("straight", "killed"))
    assert b["resumed_from"]["step"] > 0 and b["steps"] == a["steps"] and b["cells"] == a["cells"]
    assert b["step_history"]["loss"] == pytest.approx(a["step_history"]["loss"], rel=1e-4)
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)


def test_two_gloo_processes_fine_tune_scgpt_as_one_does(scgpt_stand_in, labelled, tmp_path):
    """No dropout anywhere (one and two processes would draw different masks)."""
    path, _ = labelled
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        result = run_cli(*finetune_args(path, out, "--nproc", str(nproc), "--head-dropout", "0", "--batch-size",
                                        "16", "--epochs", "1"), timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[nproc] = (json.loads((out / "report.json").read_text()),
                       torch.load(out / "model" / "best_model.pt", weights_only=True))
    (one, w1), (two, w2) = runs[1], runs[2]
    assert two["data_parallel_processes"] == 2 and two["steps"] == one["steps"]
    assert two["step_history"]["loss"] == pytest.approx(one["step_history"]["loss"], rel=1e-4)
    for name in w1:  # gloo sums in another order; Adam turns rounding-sized gradient differences of near-zero
        # parameters into steps of up to ~lr (2e-3): 1e-4 absolute is 5% of one step
        np.testing.assert_allclose(w1[name].numpy(), w2[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
