"""`make demo`: the main job on the embedded default, with no internet and no Docker Hub.

Starts an S3 server on 127.0.0.1 (moto, standing in for MinIO), writes a tiny random Geneformer into a
helical cache under data/demo/ and a synthetic .h5ad with four cell types, uploads it to
s3://helical/incoming/, then runs the runner CLI as the DAG does: chunk -> finetune -> predict. The run's
outputs are copied to data/demo/runs/<run_id>/ so they outlive the server.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from demo_tables import class_table

REPO = Path(__file__).resolve().parents[1]
BUCKET = "helical"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runner(*args: str, env: dict) -> None:
    print(f"\n$ helical-runner {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "helical_runner", *args], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--workdir", type=Path, default=REPO / "data" / "demo")
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    env = {**os.environ, "CACHE_DIR_HELICAL_PREFIX": str(workdir / "helical"), "HELICAL_SCRATCH": str(workdir / "scratch"),
           "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    os.environ.update(env)
    from helical_runner.data.synthetic import make_h5ad, write_tiny_geneformer

    print(f"demo folder: {workdir}")
    print("writing a tiny random Geneformer (gf-12L-38M-i4096 layout) and synthetic cells ...", flush=True)
    write_tiny_geneformer(workdir / "helical")
    data = make_h5ad(workdir / "cells.h5ad", n_cells=args.cells, n_genes=2000, n_types=4, genes_per_cell=200)

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env["S3_ENDPOINT_URL"] = endpoint
    print(f"embedded S3 server (moto, standing in for MinIO) at {endpoint}")
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(data), BUCKET, "incoming/cells.h5ad")
        run_id = time.strftime("demo-%Y%m%dT%H%M%S")
        env["HELICAL_RUN_ID"] = run_id
        runs = f"s3://{BUCKET}/runs/{run_id}"
        runner("chunk", "--input", f"s3://{BUCKET}/incoming/cells.h5ad", "--output", f"s3://{BUCKET}/chunks/cells",
               "--cells-per-chunk", "500", env=env)
        runner("finetune", "--data", f"s3://{BUCKET}/chunks/cells/manifest.json", "--label-column", "cell_type",
               "--output", runs, "--epochs", str(args.epochs), "--precision", args.precision, "--lr", "1e-3",
               "--batch-size", "16", env=env)
        runner("predict", "--model", f"{runs}/model", "--data", f"s3://{BUCKET}/chunks/cells/manifest.json",
               "--output", f"{runs}/predict", "--precision", args.precision, env=env)
        local = workdir / "runs" / run_id
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"runs/{run_id}/"):
            for obj in page.get("Contents", []):
                target = local / obj["Key"][len(f"runs/{run_id}/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(BUCKET, obj["Key"], str(target))
    finally:
        server.stop()

    import json

    report = json.loads((local / "report.json").read_text())
    predicted = json.loads((local / "predict" / "report.json").read_text())
    print(f"""
demo finished: validation accuracy {report['accuracy']:.3f}, {report['throughput']['cells_per_second']:.0f} cells/s,
prediction accuracy {predicted['accuracy']:.3f} (macro-F1 {predicted['macro_f1']:.3f}) on {predicted['cells']['predicted']} cells.
{class_table(predicted['class_metrics'])}
outputs (copied from S3 before the server stopped):
  report pages {local / 'report.html'}
               {local / 'predict' / 'report.html'}
  report       {local / 'report.json'}
  pictures     {local / 'training_curves.png'}  ({report['steps']} steps, one point each)
               {local / 'confusion_matrix.png'}
               {local / 'predict' / 'umap.png'}
  predictions  {local / 'predict' / 'predictions.h5ad'}  (obs + predictions + obsm['X_geneformer'])
               {local / 'predict' / 'predictions.csv'}
  model        {local / 'model'}""")


if __name__ == "__main__":
    main()
