"""`helical-runner inspect`: what the runner will use in a file, before any training.

Cells, genes, where the counts are (and what every other place holds), where the gene ids are, how many
the model's vocabulary knows and how many collapse into one token, X's encoding, the candidate label
columns with their counts, and the problem that would stop a run. The DAG's first runner step shows it in
the task log, so a wrong file fails in seconds, not after chunking.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from helical_runner.dataset import open_dataset
from helical_runner.errors import InputError, RunnerError, size_text
from helical_runner.runs import scratch_root

SHOWN_VALUES = 6  # label values listed per column in the text form


def inspect(data_url: str, scratch: Path, model_name: str, label_column: str | None = None,
            counts: str | None = None, gene_column: str | None = None) -> dict:
    """The facts as a JSON-ready dict; `problem` is the one-line reason a run would stop, or None.

    Raises InputError only when the file cannot be opened at all (then nothing else can be said)."""
    dataset = open_dataset(data_url, scratch, cells_per_chunk=1 << 30, counts=counts, gene_column=gene_column)
    try:
        facts = {
            "data": data_url, "cells": dataset.n_cells, "genes": len(dataset.genes),
            "layout": dataset.layout,
            "labels": {column: {"values": values, "missing": dataset.obs_missing.get(column, 0)}
                       for column, values in dataset.obs_value_counts.items()},
            "vocabulary": None, "problem": None,
        }
        try:
            facts["vocabulary"] = _vocabulary(dataset, model_name)
            if label_column is not None:
                from helical_runner.finetune import label_classes

                label_classes(dataset, label_column)
        except RunnerError as exc:
            facts["problem"] = str(exc)
        return facts
    finally:
        dataset.close()


def _vocabulary(dataset, model_name: str) -> dict:
    from helical_runner.finetune import check_vocabulary, gene_summary
    from helical_runner.model_files import locate
    from helical_runner.tokenizer import GeneformerTokenizer

    files = locate(model_name, fetch_missing=False)
    if not files.token_dictionary.is_file():  # a first run of a real model: finetune downloads it later
        return {"model": model_name, "note": "model files not in the cache yet: vocabulary not checked"}
    tokenizer = GeneformerTokenizer(files)
    check_vocabulary(dataset, tokenizer, model_name)
    return {"model": model_name, **gene_summary(dataset, tokenizer)}


def _scratch_line(needed: int) -> str:
    root = scratch_root()
    try:
        free = f"{size_text(shutil.disk_usage(root).free)} free there"
    except OSError:
        free = "not there yet"
    return (f"scratch: counts stored by genes (CSC); chunk regroups them by cells once, needing {size_text(needed)} "
            f"in {root} ({free})")


def text(facts: dict) -> str:
    """A few lines for a person (and the task log)."""
    layout = facts["layout"]
    others = "; ".join(f"{place} holds {held}" if held != "absent" else f"no {place}"
                       for place, held in layout["places"].items() if place != layout["counts"])
    lines = [f"{facts['data']}: {facts['cells']} cells x {facts['genes']} genes",
             f"counts: {layout['counts']} ({layout['counts_encoding']}, {layout['counts_dtype']}"
             f"{', chosen by --counts' if layout['counts_forced'] else ''})" + (f"; {others}" if others else ""),
             f"X: {layout['x_encoding']}, {layout['places'].get('X', 'not looked at')}",
             *([_scratch_line(layout["scratch_bytes"])] if layout.get("scratch_bytes") else []),
             f"gene ids: {layout['gene_source']} ({'Ensembl ids' if layout['gene_kind'] == 'ensembl' else 'symbols'})"]
    vocabulary = facts.get("vocabulary")
    if vocabulary and "note" in vocabulary:
        lines[-1] += f"; {vocabulary['note']}"
    elif vocabulary:
        lines[-1] += (f"; {vocabulary['in_vocabulary']} in {vocabulary['model']}'s vocabulary, "
                      f"{vocabulary['collapsed']} collapsed into another gene's token")
    for column, info in facts["labels"].items():
        values = sorted(info["values"].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k} {v}" for k, v in values[:SHOWN_VALUES]) + (", ..." if len(values) > SHOWN_VALUES else "")
        lines.append(f"label column {column}: {len(values)} values ({shown})"
                     + (f"; {info['missing']} cells unlabelled" if info["missing"] else ""))
    lines.append(f"problem: {facts['problem'] or 'none'}")
    return "\n".join(lines)


def check(facts: dict) -> None:
    """Raise the problem, if any, as the run would (exit 65)."""
    if facts["problem"]:
        raise InputError(facts["problem"])
