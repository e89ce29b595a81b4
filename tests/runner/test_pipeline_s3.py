"""chunk -> finetune -> predict through the real CLI against the S3 server, with the tiny model."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import BUCKET, run_cli

pytestmark = pytest.mark.slow


def read_json(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


@pytest.fixture
def uploaded(s3, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/cells.h5ad")
    return f"s3://{BUCKET}/incoming/cells.h5ad"


@pytest.fixture
def chunked(s3, uploaded, tiny_model):
    result = run_cli("chunk", "--input", uploaded, "--output", f"s3://{BUCKET}/chunks/cells", "--cells-per-chunk", "300")
    assert result.returncode == 0, result.stderr
    return f"s3://{BUCKET}/chunks/cells/manifest.json"


def test_chunk_writes_row_chunks_and_manifest(s3, chunked, cells_h5ad):
    import anndata
    import numpy as np

    manifest = read_json(s3, "chunks/cells/manifest.json")
    source_etag = s3.head_object(Bucket=BUCKET, Key="incoming/cells.h5ad")["ETag"].strip('"')
    assert manifest["source"]["etag"] == source_etag
    assert [c["n_cells"] for c in manifest["chunks"]] == [300, 300, 300]
    assert manifest["n_genes"] == 2000 and len(manifest["genes"]) == 2000
    assert "cell_type" in manifest["obs_columns"]
    assert sum(manifest["obs_value_counts"]["cell_type"].values()) == 900
    # the chunks hold exactly the original rows, in order
    original = anndata.read_h5ad(cells_h5ad)
    body = s3.get_object(Bucket=BUCKET, Key="chunks/cells/chunk-00001.h5ad")["Body"].read()
    second = anndata.read_h5ad(io.BytesIO(body))
    assert list(second.obs_names) == list(original.obs_names[300:600])
    assert np.array_equal(second.X.toarray(), original.X[300:600].toarray())
    # the input is untouched
    assert s3.head_object(Bucket=BUCKET, Key="incoming/cells.h5ad")["ETag"].strip('"') == source_etag


def test_chunk_rerun_on_same_input_is_a_no_op(s3, chunked, uploaded):
    before = s3.head_object(Bucket=BUCKET, Key="chunks/cells/manifest.json")["LastModified"]
    again = run_cli("chunk", "--input", uploaded, "--output", f"s3://{BUCKET}/chunks/cells", "--cells-per-chunk", "300")
    assert again.returncode == 0, again.stderr
    assert s3.head_object(Bucket=BUCKET, Key="chunks/cells/manifest.json")["LastModified"] == before


def test_chunk_never_loads_torch(s3, uploaded):
    # torch alone is ~0.5 GB of resident memory: a chunk container's cap is for data, not for a model library
    code = ("import sys; from helical_runner.cli import main; "
            f"code = main(['chunk', '--input', '{uploaded}', '--output', 's3://{BUCKET}/chunks/light']); "
            "print('torch' in sys.modules); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False"


# fp32 for two epochs; the mixed-precision paths (CPU autocast, 2x slower here) must learn as well in one
@pytest.mark.parametrize("precision, epochs", [("fp32", 2), ("bf16", 1), ("fp16", 1)])
def test_finetune_then_predict_learns_cell_types(s3, chunked, precision, epochs):
    out = f"s3://{BUCKET}/runs/{precision}"
    result = run_cli("finetune", "--data", chunked, "--label-column", "cell_type", "--output", out,
                     "--precision", precision, "--batch-size", "16", "--lr", "2e-3", "--epochs", str(epochs))
    assert result.returncode == 0, result.stderr
    report = read_json(s3, f"runs/{precision}/report.json")
    assert report["status"] == "succeeded" and report["precision"] == precision
    assert report["accuracy"] >= 0.8, report["validation"]  # 4 balanced classes: chance is 0.25
    assert report["inputs"]["data"]["etag"] and report["inputs"]["model"]["name"] == "gf-12L-38M-i4096"
    assert report["epochs"] == epochs and report["steps"] > 0 and len(report["losses"]) == 3 * epochs  # 3 chunks
    assert report["cells"]["trained_total"] == epochs * report["cells"]["trained_per_epoch"]
    assert report["cells"]["trained_per_epoch"] + report["cells"]["validation"] == 900
    assert report["peak_memory"]["rss_bytes"] > 0 and report["durations"]["train_seconds"] > 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{precision}/")["Contents"]}
    for name in ("training_curves.png", "confusion_matrix.png", "checkpoint.pt", "model/config.json",
                 "model/model.safetensors", "model/classifier.json", "model/token_dictionary.json"):
        assert f"runs/{precision}/{name}" in keys
    png = s3.get_object(Bucket=BUCKET, Key=f"runs/{precision}/confusion_matrix.png")["Body"].read()
    assert png.startswith(b"\x89PNG")

    predicted = run_cli("predict", "--model", f"{out}/model", "--data", chunked, "--output", f"{out}/predict",
                        "--precision", precision)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO(
        s3.get_object(Bucket=BUCKET, Key=f"runs/{precision}/predict/predictions.csv")["Body"].read().decode())))
    assert len(rows) == 900
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    accuracy = sum(r["predicted_label"] == r["true_label"] for r in rows) / len(rows)
    assert accuracy >= 0.8
    assert read_json(s3, f"runs/{precision}/predict/report.json")["accuracy"] == pytest.approx(accuracy)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{precision}/")["Contents"]}
    for name in ("report.html", "predict/report.html", "predict/predictions.h5ad", "predict/umap.png"):
        assert f"runs/{precision}/{name}" in keys


def test_saved_model_loads_in_helical(s3, chunked, tmp_path):
    """The fine-tuned encoder is in helical's model layout: helical's own Geneformer can embed with it."""
    out = f"s3://{BUCKET}/runs/helical-compat"
    result = run_cli("finetune", "--data", chunked, "--label-column", "cell_type", "--output", out,
                     "--precision", "fp32", "--batch-size", "32")
    assert result.returncode == 0, result.stderr
    from transformers import BertForMaskedLM

    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/helical-compat/model/")["Contents"]:
        s3.download_file(BUCKET, obj["Key"], str(tmp_path / obj["Key"].rsplit("/", 1)[-1]))
    model = BertForMaskedLM.from_pretrained(tmp_path)
    tokens = json.loads((tmp_path / "token_dictionary.json").read_text())  # the stand-in's real-gene vocabulary
    assert model.config.vocab_size == len(tokens) and "ENSG00000156738" in tokens  # MS4A1


def test_finetune_on_plain_h5ad_streams_it_in_chunks(s3, uploaded, tiny_model):
    out = f"s3://{BUCKET}/runs/plain"
    result = run_cli("finetune", "--data", uploaded, "--label-column", "cell_type", "--output", out,
                     "--precision", "fp32", "--cells-per-chunk", "450", "--batch-size", "32")
    assert result.returncode == 0, result.stderr
    report = read_json(s3, "runs/plain/report.json")
    assert report["inputs"]["data"]["chunks"] == 2
    assert report["status"] == "succeeded"
