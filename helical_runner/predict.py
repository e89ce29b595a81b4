"""`helical-runner predict`: annotate cells with a fine-tuned model, streamed chunk by chunk.

Writes predictions.csv (cell_id, predicted_label, probability, and the true label when the data has the
model's label column) and report.json (with accuracy when true labels exist) under the output prefix.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from helical_runner import model as model_io, storage
from helical_runner.dataset import label_values, open_dataset, prefetched
from helical_runner.finetune import check_vocabulary, gene_summary
from helical_runner.metrics import RunMetrics
from helical_runner.precision import resolve, select_device
from helical_runner.profiles import Profile
from helical_runner.report import REPORT_NAME, write_json
from helical_runner.resources import peak_rss_bytes
from helical_runner.runs import versions
from helical_runner.tokenizer import GeneformerTokenizer
from helical_runner.training import Trainer, TrainConfig

log = logging.getLogger(__name__)
PREDICTIONS_NAME = "predictions.csv"


def fetch_model(model_url: str, dest: Path) -> Path:
    """A local copy of a saved model folder (local folders are used in place)."""
    loc = storage.parse(model_url)
    if not loc.is_s3:
        return loc.path
    names = list(storage.list_names(loc))
    if model_io.META_FILE not in names:
        from helical_runner.errors import InputError

        raise InputError(f"{loc} is not a fine-tuned model folder (no {model_io.META_FILE})")
    for name in names:
        storage.download(loc.join(name), dest / name)
    return dest


def predict(model_url: str, data_url: str, output_url: str, profile: Profile, run_id: str, scratch: Path,
            metrics: RunMetrics, counts: str | None = None, gene_column: str | None = None) -> dict:
    """Annotate `data_url`'s cells. Gene ids are looked for first where the model's training file had them
    (its saved `gene_column`), so another file of the same kind gives the same tokens."""
    started = time.monotonic()
    output = storage.parse(output_url)
    device = select_device(profile.device)
    precision = resolve(profile.precision, device)
    model_dir = fetch_model(model_url, scratch / "model")
    net, meta = model_io.load(model_dir)
    net.to(device)
    tokenizer = GeneformerTokenizer(model_io.files_of_saved_model(model_dir, meta), meta.input_size)
    runner = Trainer(net, TrainConfig(), precision, tokenizer.pad_id, total_cells=1)
    dataset = open_dataset(data_url, scratch, profile.cells_per_chunk, profile.max_input_bytes, counts, gene_column,
                           prefer_gene_column=meta.gene_column or None)
    try:
        check_vocabulary(dataset, tokenizer, meta.base_model)
        genes = gene_summary(dataset, tokenizer)
        has_truth = meta.label_column in dataset.obs_value_counts
        metrics.update(chunks_total=dataset.n_chunks, memory_limit_bytes=profile.memory_limit_bytes)
        n_predicted = n_correct = n_dropped = n_labelled = 0
        inference_seconds = 0.0  # the encoder and head alone: what helical's get_embeddings + a classifier does

        def prepare(i: int):
            chunk = dataset.load(i)
            tokens = tokenizer.tokenize(chunk.X, chunk.gene_ids, chunk.obs.index)
            truth = label_values(chunk.obs[meta.label_column]).to_numpy()[tokens.kept] if has_truth else None
            return tokens, truth

        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            table = Path(tmp) / PREDICTIONS_NAME
            with open(table, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["cell_id", "predicted_label", "probability"] + (["true_label"] if has_truth else []))
                loaders = [lambda i=i: prepare(i) for i in range(dataset.n_chunks)]
                for done, (tokens, truth) in enumerate(prefetched(loaders), start=1):
                    inference_started = time.monotonic()
                    probs = runner.predict(tokens.input_ids, profile.batch_size * 4) if tokens.input_ids else \
                        np.zeros((0, len(meta.labels)))
                    inference_seconds += time.monotonic() - inference_started
                    best = probs.argmax(axis=1)
                    predicted = np.asarray(meta.labels)[best]
                    for row, cell in enumerate(tokens.cell_ids):
                        writer.writerow([cell, predicted[row], f"{probs[row, best[row]]:.4f}"]
                                        + ([truth[row]] if has_truth else []))
                    n_predicted += len(best)
                    n_dropped += tokens.dropped_empty
                    if has_truth:  # cells without a label are predicted but not scored
                        labelled = np.array([t is not None for t in truth], dtype=bool)
                        n_labelled += int(labelled.sum())
                        n_correct += int((predicted[labelled] == truth[labelled]).sum())
                    metrics.update(chunks_done=done, cells=n_predicted)
                    log.info("predicted chunk %d/%d (%d cells so far)", done, dataset.n_chunks, n_predicted)
            storage.upload(table, output.join(PREDICTIONS_NAME))
    finally:
        dataset.close()
    report = {
        "status": "succeeded", "command": "predict", "run_id": run_id,
        "inputs": {"model": model_url, "data": {"url": data_url, "etag": dataset.etag, "size": dataset.size,
                                                  "cells": dataset.n_cells}},
        "model": {"base_model": meta.base_model, "labels": meta.labels, "label_column": meta.label_column},
        "precision": precision.name, "device": str(device),
        "data_layout": dataset.layout,
        "genes": genes,
        "cells": {"predicted": n_predicted, "dropped": n_dropped, "labelled": n_labelled},
        "accuracy": n_correct / n_labelled if has_truth and n_labelled else None,
        "durations": {"total_seconds": time.monotonic() - started, "inference_seconds": inference_seconds},
        "peak_memory": {"rss_bytes": peak_rss_bytes()},
        "outputs": {"predictions": str(output.join(PREDICTIONS_NAME))},
        "versions": versions(),
    }
    write_json(output, REPORT_NAME, report)
    log.info("predictions for %d cells written to %s", n_predicted, output.join(PREDICTIONS_NAME))
    return report
