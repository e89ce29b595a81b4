"""`helical-runner finetune`: stream a dataset, fine-tune a classifier on any family that fine-tunes
(models.family_of: Geneformer, scGPT), save model and report.

Outputs under the output prefix: model/ (models/classifier.py and the family's network.py), checkpoint.pt
(after every chunk; a rerun with the same output resumes from it), report.json, report.html, training_curves.png, confusion_matrix.png.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from typing import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from helical_runner.training import checkpoint

from helical_runner.outputs import fencing

from helical_runner.data import storage
from helical_runner.training.batching import is_validation
from helical_runner.data.dataset import Chunk, Dataset, HeadStart, label_values, open_dataset, prefetched
from helical_runner.training.distributed import DistContext
from helical_runner.errors import InputError
from helical_runner.outputs.metrics import RunMetrics
from helical_runner import models
from helical_runner.models.classifier import ClassifierMeta
from helical_runner.training.precision import resolve, select_device
from helical_runner.profiles import Profile
from helical_runner.outputs import report_html
from helical_runner.outputs.publish import publish_report
from helical_runner.outputs.report import REPORT_NAME, class_metrics, confusion_matrix, publish_plots
from helical_runner.tracking import NoTracking, registry
from helical_runner.resources import peak_memory
from helical_runner.runs import previous_report, versions
from helical_runner.data.storage import Location
from helical_runner.training.loop import (PreparedChunk, Trainer, TrainConfig, TrainState, chunk_order,
                                     estimate_training_cells, fit)

log = logging.getLogger(__name__)


def label_classes(dataset: Dataset, column: str) -> list[str]:
    """The classes of `column`: its labels in natural order (clusters "2" before "10", "c2" before "c10"),
    which is also the classifier's output order. Raises InputError with fewer than 2 classes."""
    counts = dataset.label_counts(column)  # missing values and unused categories are not in it
    classes = sorted((label for label in counts if label != ""), key=natural_key)
    if len(classes) < 2:
        raise InputError(f"{dataset.name}: label column '{column}' has {len(classes)} class(es) "
                         f"({', '.join(classes) or 'none'}); a classifier needs at least 2")
    return classes


def natural_key(label: str) -> list:
    """Sort key reading runs of digits as numbers: text at even places, integers at odd ones, so any two
    keys compare (re.split with a group always starts and ends with text)."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", label))]


def chunk_preparer(dataset: Dataset, base, label_column: str, label_index: dict[str, int], val_fraction: float,
                   load: Callable[[int], Chunk] | None = None):
    """A function chunk index -> PreparedChunk (runs on the prefetch thread: read, check, tokenize with the
    family's `base` (models.BaseModel), split); `load` reads a chunk (default: dataset.load)."""
    load = load or dataset.load

    def prepare(i: int) -> PreparedChunk:
        chunk = load(i)
        if label_column not in chunk.obs.columns:
            raise InputError(f"{dataset.name}: chunk {i} has no obs column '{label_column}'")
        obs = chunk.obs
        keep = np.ones(len(obs), dtype=bool)
        if "filter_pass" in obs.columns:  # helical's QC convention: only cells with filter_pass == 1
            keep &= (obs["filter_pass"] == 1).to_numpy()
        labels = label_values(obs[label_column]).map(label_index)  # missing -> NaN: unlabelled, dropped
        tokens = base.tokenize(Chunk(chunk.index, chunk.X[keep], obs[keep], chunk.gene_ids))
        y = labels.to_numpy()[keep][tokens.kept]
        labelled = ~np.isnan(y.astype(float))
        ids = [t for t, ok in zip(tokens.input_ids, labelled) if ok]
        lengths, y, cells = tokens.lengths[labelled], y[labelled].astype(np.int64), tokens.cell_ids[labelled]
        val = is_validation(cells, val_fraction)
        return PreparedChunk(
            index=i,
            train_ids=[t for t, v in zip(ids, val) if not v], train_lengths=lengths[~val], train_labels=y[~val],
            val_ids=[t for t, v in zip(ids, val) if v], val_labels=y[val],
            dropped=int(len(obs) - len(y)),
        )

    return prepare


def _fingerprint(dataset: Dataset, base, classes, label_column, config: TrainConfig,
                 profile: Profile, precision: str) -> dict:
    return {"data_etag": dataset.etag, "chunk_sizes": dataset.chunk_sizes, "model": base.name,
            "labels": list(classes), "label_column": label_column, "config": asdict(config),
            "precision": precision, "max_input_size": profile.max_input_size}


def finetune(data_url: str, label_column: str, output_url: str, model_name: str, profile: Profile,
             config: TrainConfig, run_id: str, scratch: Path, metrics: RunMetrics, counts: str | None = None,
             gene_column: str | None = None, early_prefetch: bool = True, tracking=None,
             register: str | None = None, promote: str = "auto") -> dict:
    """Fine-tune on `data_url` (manifest or .h5ad; `counts`/`gene_column` as `--counts`/`--gene-column`).
    With `early_prefetch` the first chunk is read while helical's model files are located (its import takes
    seconds) and tokenized while the model loads, both on background threads, so training starts sooner.
    With `tracking` (helical_runner.tracking) the model is logged to the step's MLflow run and registered as
    a version of `register` (default helical-<label column>), `promote` deciding the champion alias."""
    tracking = tracking or NoTracking()
    started = time.monotonic()
    output = storage.parse(output_url)
    previous = previous_report(output)
    if previous and previous.get("status") == "succeeded":
        log.info("%s already holds a finished run (report.json): nothing to do", output)
        return previous

    dist = DistContext.from_env()
    device = select_device(profile.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = resolve(profile.precision, device)
    dist.init(device)
    if dist.is_main:  # rank 0 alone writes: it holds the lease that fences out older attempts (fencing.py)
        fencing.hold(output, "finetune")
    dataset = open_dataset(data_url, scratch, profile.cells_per_chunk, profile.max_input_bytes, counts, gene_column,
                           max_cells=profile.max_cells)
    try:
        load, first = dataset.load, chunk_order(config.seed, 0, dataset.n_chunks)[0]  # a fresh run's first chunk
        if early_prefetch:  # a resumed run that starts at another chunk reads its own (HeadStart.serve)
            load = HeadStart(dataset.load, first).serve(dataset.load)
        family = models.family_of(model_name)
        if not hasattr(family, "base"):  # an embedding-only family (ModelRow.fine_tunes False)
            raise InputError(f"model '{model_name}' ({family.FAMILY}) has no classification head here: use embed")
        base = family.base(model_name, profile.max_input_size) if dist.is_main else None
        dist.barrier()  # rank 0 fetches missing model files once; the others then find them in the cache
        base = base or family.base(model_name, profile.max_input_size, fetch_missing=False)
        classes = label_classes(dataset, label_column)
        genes = base.genes(dataset)
        log.info("%s: %d cells in %d chunks, %d genes in the vocabulary (%s), %d classes of '%s'", dataset.url,
                 dataset.n_cells, dataset.n_chunks, genes["tokens"], base.name, len(classes), label_column)
        prepare = chunk_preparer(dataset, base, label_column, {c: i for i, c in enumerate(classes)},
                                 config.val_fraction, load)
        if early_prefetch:
            prepare = HeadStart(prepare, first).serve(prepare)

        torch.manual_seed(config.seed)
        net = base.classifier(len(classes), config.head_dropout)
        net.freeze_layers(config.freeze_layers)
        if config.attention_dropout is not None:
            net.set_attention_dropout(config.attention_dropout)
        if config.hidden_dropout is not None:
            net.set_hidden_dropout(config.hidden_dropout)
        net.to(device)
        trainer = Trainer(net, config, precision, estimate_training_cells(dataset.chunk_sizes, config), dist)
        store = checkpoint.CheckpointStore(output, scratch)
        fingerprint = _fingerprint(dataset, base, classes, label_column, config, profile, precision.name)
        state = _resume(store, trainer, fingerprint)
        if state.step:  # what the killed attempt trained before its checkpoint may not have reached MLflow
            tracking.log_history({"loss": state.step_losses, "learning_rate": state.step_lrs}, state.val_history)

        def save_checkpoint(current: TrainState) -> None:
            if not dist.is_main:
                return
            store.save({"fingerprint": fingerprint, "trainer": trainer.state_dict(),
                        "state": checkpoint.state_to_dict(current), "torch_rng": torch.get_rng_state()})

        metrics.update(chunks_total=dataset.n_chunks * config.epochs, memory_limit_bytes=profile.memory_limit_bytes,
                       chunks_done=state.epoch * dataset.n_chunks + state.chunk_pos, cells=state.cells_seen)
        training_start: list[float] = []

        def prefetch(loaders):
            for item in prefetched(loaders):
                if not training_start:  # the loop has its model and its first chunk: training starts now
                    training_start.append(time.monotonic() - started)
                    log.info("training starts %.2f s after start (model loaded, first chunk ready)",
                             training_start[0])
                yield item

        state = fit(trainer, dataset.n_chunks, prepare, state, save_checkpoint, metrics.update, prefetch)
        if not dist.is_main:
            dist.barrier()  # wait for rank 0 to publish, so no rank exits while another may still need it
            return {"status": "succeeded", "steps": state.step, "accuracy": None, "rank": dist.rank}
        report = _publish(output, trainer, state, dataset, base, classes, label_column, config, profile,
                          precision.name, run_id, started, data_url, genes,
                          training_start[0] if training_start else None,
                          tracking, register or registry.default_name(label_column), promote)
        dist.barrier()
        return report
    finally:
        dataset.close()
        dist.shutdown()


def _resume(store: checkpoint.CheckpointStore, trainer: Trainer, fingerprint: dict) -> TrainState:
    saved = store.load()
    if saved is None:
        return TrainState()
    if saved["fingerprint"] != fingerprint:
        changed = sorted(k for k in fingerprint if saved["fingerprint"].get(k) != fingerprint[k])
        raise InputError(f"checkpoint {store.location} belongs to a run with other settings ({', '.join(changed)}); "
                         "use a new output prefix or delete the checkpoint")
    trainer.load_state_dict(saved["trainer"])
    torch.set_rng_state(saved["torch_rng"])
    state = checkpoint.state_from_dict(saved["state"])
    state.resumed_from = {"epoch": state.epoch + 1, "chunks_done": state.chunk_pos, "step": state.step}
    log.info("resuming from checkpoint: epoch %d, %d chunk(s) done, step %d", state.epoch + 1, state.chunk_pos,
             state.step)
    return state


def _publish(output: Location, trainer: Trainer, state: TrainState, dataset: Dataset, base,
             classes: list[str], label_column: str, config: TrainConfig, profile: Profile, precision: str,
             run_id: str, started: float, data_url: str, genes: dict,
             training_start_seconds: float | None, tracking, register: str, promote: str) -> dict:
    labels = np.asarray(state.val_labels, dtype=np.int64)
    if len(labels):
        predictions = trainer.predict(state.val_ids, config.batch_size * 4).argmax(axis=1)
    else:
        predictions = np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(labels, predictions, len(classes))
    meta = ClassifierMeta(labels=classes, label_column=label_column, base_model=base.name,
                          model_version=base.version, input_size=base.input_size, special_token=base.special_token,
                          dropout=trainer.core.dropout.p, gene_column=dataset.layout.get("gene_column", ""),
                          counts=dataset.layout.get("counts", ""), family=base.family)
    with tempfile.TemporaryDirectory() as tmp:
        base.save(trainer.core, meta, Path(tmp))
        for path in sorted(Path(tmp).iterdir()):
            storage.upload(path, output.join("model", path.name))
        tracking.log_artifacts(Path(tmp), "model")
    steps = {"loss": state.step_losses, "lr": state.step_lrs}
    pictures = publish_plots(output, steps, state.val_history, matrix, classes)
    report = {
        "status": "succeeded",
        "command": "finetune",
        "run_id": run_id,
        "inputs": {"data": {"url": data_url, "etag": dataset.etag, "size": dataset.size, "cells": dataset.n_cells,
                            "chunks": dataset.n_chunks},
                   "model": {"name": base.name, "version": base.version, "family": base.family}},
        "profile": asdict(profile),
        "precision": precision,
        "device": str(trainer.precision.device),
        "config": asdict(config),
        "label_column": label_column,
        "labels": classes,
        "data_layout": dataset.layout,  # where the counts and gene ids were found (h5ad_layout)
        "genes": genes,
        "cells": {"total": dataset.n_cells, "unlabelled": dataset.obs_missing.get(label_column, 0), "trained_per_epoch": state.cells_seen // max(1, config.epochs),
                  "trained_total": state.cells_seen, "validation": int(len(labels)), "dropped": state.cells_dropped},
        "epochs": config.epochs,
        "steps": state.step,
        "losses": [h["loss"] for h in state.history],
        "history": state.history,
        "validation": state.val_history,
        "accuracy": state.val_history[-1]["val_accuracy"] if state.val_history else None,
        "confusion_matrix": matrix.tolist(),
        "class_metrics": class_metrics(labels, predictions, classes),  # on the validation cells
        "step_history": steps,  # loss and learning rate at every optimisation step
        "throughput": {
            "cells_per_second": state.cells_seen / state.train_seconds if state.train_seconds else None,
            "data_wait_fraction": state.data_wait_seconds / state.train_seconds if state.train_seconds else None,
            "padding_efficiency": state.real_tokens / state.padded_tokens if state.padded_tokens else None,
        },
        "durations": {"total_seconds": time.monotonic() - started, "train_seconds": state.train_seconds,
                      "data_wait_seconds": state.data_wait_seconds,
                      "training_start_seconds": training_start_seconds},  # start -> model and first chunk ready
        "peak_memory": peak_memory(),
        "resumed_from": state.resumed_from,
        "data_parallel_processes": trainer.dist.world,
        "outputs": {"model": str(output.join("model")), "checkpoint": str(output.join(checkpoint.CHECKPOINT_NAME)),
                    "pictures": [str(output.join(p)) for p in pictures],
                    "report_html": str(output.join(report_html.HTML_NAME))},
        "versions": versions(),
    }
    report["macro_f1"] = report["class_metrics"]["macro_f1"]
    tracking.register_model(register, promote, {
        "base_model": base.name, "label_column": label_column, "classes": json.dumps(classes)[:5000],
        "data_etag": dataset.etag, "data": data_url, "airflow.run_id": run_id}, report["macro_f1"])
    publish_report(output, report, pictures, tracking)
    log.info("fine-tuning done: %d steps, validation accuracy %s, report at %s", state.step,
             f"{report['accuracy']:.3f}" if report["accuracy"] is not None else "n/a", output.join(REPORT_NAME))
    return report
