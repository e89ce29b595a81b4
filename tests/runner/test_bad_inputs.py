"""Bad input: exit 65 (69 for an unreachable S3), one clear line on stderr naming the problem and the
object, nothing in the output prefix but error.json (and the step's lease, fencing.py), and the input left
exactly as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bad_inputs
from bad_inputs import counts, h5ad_bytes
from conftest import BUCKET, free_port
from helical_runner.cli import main


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    return bad_inputs.valid_bytes(tmp_path_factory.mktemp("valid"))


CASES = {
    **{name: (make, [], expected) for name, (make, expected) in bad_inputs.BAD_FILES.items()},
    "missing-label-flag": (lambda ok: ok, ["--label-column", "celltype"], "no obs column 'celltype' usable as labels"),
    "unknown-model": (lambda ok: ok, ["--model", "gf-99L"], "unknown model 'gf-99L'; models this runner runs: gf-12L-38M-i4096"),
    "unknown-profile": (lambda ok: ok, ["--profile", "gpu-1000gb"], "unknown profile 'gpu-1000gb'"),
    "missing-object": (None, [], "does not exist"),
    "hidden-dropout-out-of-range": (lambda ok: ok, ["--hidden-dropout", "1.5"], "hidden dropout must be in [0, 1)"),
}
FLAG_CASES = ("unknown-model", "unknown-profile", "hidden-dropout-out-of-range")  # errors in a flag, not the data


def run_main(capfd, args) -> tuple[int, list[str]]:
    code = main(args)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly_and_keeps_the_input(case, s3, tiny_model, valid_bytes, capfd):
    make, extra, expected = CASES[case]
    key = f"incoming/{case}.h5ad"
    if make is not None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=make(valid_bytes))
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    args = ["finetune", "--data", f"s3://{BUCKET}/{key}", "--label-column", "cell_type",
            "--output", f"s3://{BUCKET}/runs/{case}", "--precision", "fp32", *extra]  # a repeated flag wins
    code, lines = run_main(capfd, args)
    assert code == 65, lines
    assert lines[-1].startswith("helical-runner: error: ") and expected in lines[-1], lines[-1]
    if case not in FLAG_CASES:
        assert f"s3://{BUCKET}/{key}" in lines[-1]  # names the object
    assert not any("Traceback" in line for line in lines)
    outputs = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{case}/").get("Contents", [])]
    assert [key for key in outputs if not key.startswith(f"runs/{case}/lease.")] == [f"runs/{case}/error.json"]
    error = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{case}/error.json")["Body"].read())
    assert error["status"] == "failed" and expected in error["error"] and error["exit_code"] == 65
    if make is not None:
        assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == etag  # input untouched


def test_chunk_of_bad_rows_leaves_no_partial_chunks(s3, tiny_model, capfd):
    X = counts(n_cells=40)
    X[35, 2] = np.nan  # in the last chunk: earlier chunks are written before it is read
    s3.put_object(Bucket=BUCKET, Key="incoming/late-nan.h5ad", Body=h5ad_bytes(X))
    code, lines = run_main(capfd, ["chunk", "--input", f"s3://{BUCKET}/incoming/late-nan.h5ad",
                                   "--output", f"s3://{BUCKET}/chunks/late-nan", "--cells-per-chunk", "10"])
    assert code == 65 and "NaN" in lines[-1] and "c35" in lines[-1]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="chunks/late-nan/").get("Contents", [])]
    assert keys == ["chunks/late-nan/error.json"]


def test_input_over_the_profile_size_cap_is_refused_up_front(s3, tiny_model, valid_bytes, tmp_path, capfd, monkeypatch):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("default: tiny\nprofiles:\n  tiny: {image: x, queue: cpu, device: cpu, gpus: 0, precision: fp32,"
                        " batch_size: 4, max_input_size: 512, cells_per_chunk: 100, memory_limit: 1g,"
                        " max_input_bytes: 1k}\n")
    monkeypatch.setenv("HELICAL_PROFILES", str(profiles))
    s3.put_object(Bucket=BUCKET, Key="incoming/big.h5ad", Body=valid_bytes)
    code, lines = run_main(capfd, ["finetune", "--data", f"s3://{BUCKET}/incoming/big.h5ad", "--label-column",
                                   "cell_type", "--output", f"s3://{BUCKET}/runs/big"])
    assert code == 65 and "over the profile's cap of 1k" in lines[-1] and "incoming/big.h5ad" in lines[-1]


def test_unreachable_s3_fails_with_exit_69_after_retrying(tiny_model, capfd, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("S3_RETRY_SECONDS", "2")
    code, lines = run_main(capfd, ["finetune", "--data", f"s3://{BUCKET}/incoming/x.h5ad", "--label-column",
                                   "cell_type", "--output", f"s3://{BUCKET}/runs/x"])
    assert code == 69
    assert lines[-1].startswith("helical-runner: error: S3 endpoint http://127.0.0.1:") and "unreachable for 2s" in lines[-1]
    assert any("retrying" in line for line in lines)


def test_gene_symbols_are_mapped_through_the_models_own_mapping(s3, tiny_model, capfd):
    from helical_runner.data.synthetic import panel

    genes = list(panel(300)["symbol"])  # real symbols, mapped through the stand-in's mapping file
    X = counts(n_cells=60, n_genes=300)
    s3.put_object(Bucket=BUCKET, Key="incoming/symbols.h5ad", Body=h5ad_bytes(X, genes=genes))
    code, lines = run_main(capfd, ["finetune", "--data", f"s3://{BUCKET}/incoming/symbols.h5ad", "--label-column",
                                   "cell_type", "--output", f"s3://{BUCKET}/runs/symbols", "--precision", "fp32"])
    assert code == 0, lines[-3:]
    assert any("300 genes in the vocabulary" in line for line in lines)


def test_errors_found_after_chunking_name_the_upload_not_the_manifest(s3, tiny_model, valid_bytes, capfd):
    s3.put_object(Bucket=BUCKET, Key="incoming/labelled.h5ad", Body=valid_bytes)
    code, _ = run_main(capfd, ["chunk", "--input", f"s3://{BUCKET}/incoming/labelled.h5ad",
                               "--output", f"s3://{BUCKET}/chunks/labelled", "--cells-per-chunk", "20"])
    assert code == 0
    code, lines = run_main(capfd, ["finetune", "--data", f"s3://{BUCKET}/chunks/labelled/manifest.json",
                                   "--label-column", "celltype", "--output", f"s3://{BUCKET}/runs/labelled"])
    assert code == 65
    assert lines[-1].startswith(f"helical-runner: error: s3://{BUCKET}/incoming/labelled.h5ad: no obs column 'celltype'")
