"""`helical-runner predict`: annotate cells with a fine-tuned model, streamed chunk by chunk.

Writes under the output prefix: predictions.csv (cell_id, predicted_label, probability, and the true label
when the data has the model's label column); predictions.h5ad (annotated.py: the input's obs, predictions,
and the cell embeddings unless turned off); umap.png of the embeddings; with true labels, per-class
metrics in report.json and confusion_matrix.png; report.json and report.html.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from helical_runner.errors import InputError
from helical_runner.outputs import fencing, report_html
from helical_runner.outputs.publish import publish_report
from helical_runner.tracking import NoTracking, registry

from helical_runner.data import storage
from helical_runner.outputs.annotated import PREDICTIONS_H5AD, AnnotatedWriter, every_cell
from helical_runner.data.dataset import label_values, open_dataset, prefetched
from helical_runner.models.classifier import META_FILE, load_saved
from helical_runner.outputs.metrics import RunMetrics
from helical_runner.training.precision import resolve, select_device
from helical_runner.profiles import Profile
from helical_runner.outputs.report import (CONFUSION_NAME, class_metrics, confusion_matrix, plot_confusion,
                                   upload_picture)
from helical_runner.resources import peak_memory
from helical_runner.runs import versions
from helical_runner.training.loop import Trainer, TrainConfig
from helical_runner.outputs.umap_plot import UMAP_NAME, plot_umap

log = logging.getLogger(__name__)
PREDICTIONS_NAME = "predictions.csv"


def fetch_model(model_url: str, dest: Path) -> tuple[Path, dict | None]:
    """A local copy of a saved model folder (local folders are used in place), and where the registry had
    it when `model_url` is models:/NAME@ALIAS or models:/NAME/VERSION (tracking.registry.download)."""
    if registry.is_registry_uri(model_url):
        return registry.download(model_url, dest)
    return _fetch_folder(model_url, dest), None


def _fetch_folder(model_url: str, dest: Path) -> Path:
    loc = storage.parse(model_url)
    if not loc.is_s3:
        return loc.path
    names = list(storage.list_names(loc))
    if META_FILE not in names:
        raise InputError(f"{loc} is not a fine-tuned model folder (no {META_FILE})")
    for name in names:
        storage.download(loc.join(name), dest / name)
    return dest


def predict(model_url: str, data_url: str, output_url: str, profile: Profile, run_id: str, scratch: Path,
            metrics: RunMetrics, counts: str | None = None, gene_column: str | None = None,
            embeddings: bool = True, embeddings_url: str | None = None, tracking=None) -> dict:
    """Annotate `data_url`'s cells. Gene ids are looked for first where the model's training file had them
    (its saved `gene_column`), so another file of the same kind gives the same tokens. `model_url` is a
    model folder or a registry URL (fetch_model); with `embeddings_url` (an embed step's embeddings.h5ad of
    the same chunks) predictions.h5ad also gets its clusters and UMAP (clusters.copy_clusters)."""
    started = time.monotonic()
    tracking = tracking or NoTracking()
    output = storage.parse(output_url)
    fencing.hold(output, "predict")  # before anything is written: an older attempt of this step is fenced out
    device = select_device(profile.device)
    precision = resolve(profile.precision, device)
    model_dir, registered = fetch_model(model_url, scratch / "model")
    tracking.log_params({"model_version": registered and registered["version"],
                         "model_name": registered and registered["name"]})
    net, base, meta = load_saved(model_dir)  # whichever family fine-tuned it (classifier.json says)
    net.to(device)
    runner = Trainer(net, TrainConfig(), precision, total_cells=1)
    dataset = open_dataset(data_url, scratch, profile.cells_per_chunk, profile.max_input_bytes, counts, gene_column,
                           prefer_gene_column=meta.gene_column or None, max_cells=profile.max_cells)
    hidden = net.classifier.in_features
    try:
        genes = base.genes(dataset)
        has_truth = meta.label_column in dataset.obs_value_counts
        metrics.update(chunks_total=dataset.n_chunks, memory_limit_bytes=profile.memory_limit_bytes)
        n_predicted = n_dropped = 0
        scored = ScoredCells(meta.labels)
        inference_seconds = 0.0  # the encoder and head alone: what helical's get_embeddings + a classifier does

        def prepare(i: int):
            chunk = dataset.load(i)
            return chunk.obs, base.tokenize(chunk)

        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            table = Path(tmp) / PREDICTIONS_NAME
            writer = AnnotatedWriter(Path(tmp) / PREDICTIONS_H5AD, meta.label_column, meta.labels,
                                     hidden if embeddings else None)
            with open(table, "w", newline="") as handle:
                rows = csv.writer(handle)
                rows.writerow(["cell_id", "predicted_label", "probability"] + (["true_label"] if has_truth else []))
                loaders = [lambda i=i: prepare(i) for i in range(dataset.n_chunks)]
                for done, (obs, tokens) in enumerate(prefetched(loaders), start=1):
                    began = time.monotonic()
                    probs, embs = runner.predict(tokens.input_ids, profile.batch_size * 4, embeddings=True) \
                        if tokens.input_ids else (np.zeros((0, len(meta.labels))), np.zeros((0, hidden)))
                    inference_seconds += time.monotonic() - began
                    best = probs.argmax(axis=1)
                    predicted = np.asarray(meta.labels)[best]
                    # missing labels are None: predicted, written, but not scored
                    truth = label_values(obs[meta.label_column]).to_numpy()[tokens.kept] if has_truth else None
                    for row, cell in enumerate(tokens.cell_ids):
                        rows.writerow([cell, predicted[row], f"{probs[row, best[row]]:.4f}"]
                                      + ([truth[row]] if has_truth else []))
                    writer.append(obs, *_all_cells(tokens.kept, best, probs, embs if embeddings else None))
                    if has_truth:
                        scored.add(truth, best)
                    n_predicted += len(best)
                    n_dropped += tokens.dropped_empty
                    metrics.update(chunks_done=done, cells=n_predicted)
                    log.info("predicted chunk %d/%d (%d cells so far)", done, dataset.n_chunks, n_predicted)
            writer.close()
            joined = _copy_clusters(embeddings_url, writer.path) if embeddings_url else None
            inference_done = time.monotonic()
            storage.upload(table, output.join(PREDICTIONS_NAME))
            storage.upload(writer.path, output.join(PREDICTIONS_H5AD))
            figures, umap_info = _pictures(writer.path, meta.label_column, scored if has_truth else None,
                                           Path(tmp), output, embeddings)
    finally:
        dataset.close()
    class_scores = scored.metrics() if has_truth else None
    report = {
        "status": "succeeded", "command": "predict", "run_id": run_id,
        "inputs": {"model": model_url, "data": {"url": data_url, "etag": dataset.etag, "size": dataset.size,
                                                  "cells": dataset.n_cells, "chunks": dataset.n_chunks}},
        "model": {"base_model": meta.base_model, "family": meta.family, "labels": meta.labels, "label_column": meta.label_column,
                  "registered": registered},
        "clusters_from": {"embeddings": embeddings_url, "column": joined} if embeddings_url else None,
        "profile": asdict(profile), "precision": precision.name, "device": str(device),
        "batch_size": profile.batch_size * 4, "embeddings": embeddings,
        "data_layout": dataset.layout,
        "genes": genes,
        "cells": {"predicted": n_predicted, "dropped": n_dropped,
                  "labelled": class_scores["cells"] if class_scores else 0},
        "accuracy": class_scores["accuracy"] if class_scores else None,
        "macro_f1": class_scores["macro_f1"] if class_scores else None,
        "class_metrics": class_scores,
        "confusion_matrix": scored.matrix().tolist() if has_truth else None,
        "confusion_labels": scored.classes if has_truth else None,
        "cells_per_second": n_predicted / inference_seconds if inference_seconds else None,
        "umap": umap_info,
        # outputs_seconds: writing predictions.csv/.h5ad out and drawing the pictures, after the last chunk
        "durations": {"total_seconds": time.monotonic() - started, "inference_seconds": inference_seconds,
                      "outputs_seconds": time.monotonic() - inference_done},
        "peak_memory": peak_memory(),
        "outputs": {"predictions": str(output.join(PREDICTIONS_NAME)),
                    "annotated": str(output.join(PREDICTIONS_H5AD)),
                    "pictures": [str(output.join(name)) for name in figures],
                    "report_html": str(output.join(report_html.HTML_NAME))},
        "versions": versions(),
    }
    publish_report(output, report, figures, tracking or NoTracking())
    log.info("predictions for %d cells written to %s and %s", n_predicted, output.join(PREDICTIONS_NAME),
             output.join(PREDICTIONS_H5AD))
    return report


def _copy_clusters(embeddings_url: str, h5ad: Path) -> str | None:
    from helical_runner.data.s3_file import S3File
    from helical_runner.outputs.clusters import copy_clusters

    loc = storage.parse(embeddings_url)
    if not storage.exists(loc):
        raise InputError(f"--embeddings {loc}: not found (run embed on the same chunks first)")
    source = S3File(loc) if loc.is_s3 else loc.path
    try:
        return copy_clusters(source, h5ad)
    finally:
        if loc.is_s3:
            source.close()


def _all_cells(kept: np.ndarray, best: np.ndarray, probs: np.ndarray, embs: np.ndarray | None):
    """Per-cell results over every cell of the chunk: cells without tokens get -1 / NaN."""
    predicted = np.full(len(kept), -1, dtype=np.int64)
    predicted[kept] = best
    confidence = np.full(len(kept), np.nan, dtype=np.float32)
    confidence[kept] = probs[np.arange(len(best)), best]
    return predicted, confidence, every_cell(kept, embs) if embs is not None else None


class ScoredCells:
    """True and predicted classes of the labelled cells, as small integer codes (4 bytes a cell each).

    True labels the model never learnt get codes after the model's classes, so they show in the table."""

    def __init__(self, model_classes: list[str]):
        self.classes = list(model_classes)
        self._index = {c: i for i, c in enumerate(self.classes)}
        self._truth: list[np.ndarray] = []
        self._predicted: list[np.ndarray] = []

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        labelled = np.array([t is not None for t in truth], dtype=bool)
        for label in np.unique(truth[labelled]):
            if label not in self._index:
                self._index[label] = len(self.classes)
                self.classes.append(str(label))
        self._truth.append(np.array([self._index[t] for t in truth[labelled]], dtype=np.int32))
        self._predicted.append(np.asarray(predicted)[labelled].astype(np.int32))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0, dtype=np.int32)
        return (np.concatenate(self._truth) if self._truth else empty,
                np.concatenate(self._predicted) if self._predicted else empty)

    def metrics(self) -> dict:
        return class_metrics(*self._arrays(), self.classes)

    def matrix(self) -> np.ndarray:
        return confusion_matrix(*self._arrays(), len(self.classes))


def _pictures(h5ad: Path, label_column: str, scored: ScoredCells | None, tmp: Path, output,
              embeddings: bool) -> tuple[dict[str, bytes], dict | None]:
    """umap.png (with embeddings) and confusion_matrix.png (with true labels), uploaded; {name: PNG}."""
    figures, umap_info = {}, None
    if embeddings:
        umap_info = plot_umap(h5ad, label_column, tmp / UMAP_NAME)
        if umap_info:
            figures[UMAP_NAME] = upload_picture(tmp / UMAP_NAME, output)
    if scored is not None:
        plot_confusion(scored.matrix(), scored.classes, tmp / CONFUSION_NAME, title="Prediction confusion matrix")
        figures[CONFUSION_NAME] = upload_picture(tmp / CONFUSION_NAME, output)
    return figures, umap_info
