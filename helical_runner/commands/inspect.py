"""`helical-runner inspect`: what the runner will use in a file, before any training.

Cells, genes, where the counts are (and what every other place holds), where the gene ids are, how many
the model's vocabulary knows and how many collapse into one token, X's encoding, the likely label columns
with their counts (then the other obs columns summed up in one line: a CELLxGENE file has dozens of
constant or numeric QC columns), and the problem that would stop a run. The DAG's first runner step shows
it in the task log, so a wrong file fails in seconds, not after chunking.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from helical_runner.data.dataset import open_dataset
from helical_runner.errors import InputError, RunnerError, size_text
from helical_runner.runs import scratch_root

SHOWN_VALUES = 6  # label values listed per column in the text form
SHOWN_NAMES = 6  # other obs columns named per kind in the text form
LABEL_SHARE = 0.5  # a label's values are shared: at most this many distinct values per labelled cell
NUMERIC_LABEL_SHARE = 0.2  # numbers (cluster numbers, batches) more so: QC counts repeat only by chance
NUMERIC_LABEL_VALUES = 50  # and at most this many of them


def inspect(data_url: str, scratch: Path, model_name: str, label_column: str | None = None,
            counts: str | None = None, gene_column: str | None = None, unlabelled_ok: bool = False) -> dict:
    """The facts as a JSON-ready dict; `problem` is the one-line reason a run would stop, or None. With a
    `label_column`, `labelled` says whether it holds 2+ classes; if not, that is the problem, unless
    `unlabelled_ok` (then `unlabelled` gives the reason and there is no problem).

    Raises InputError only when the file cannot be opened at all (then nothing else can be said)."""
    dataset = open_dataset(data_url, scratch, cells_per_chunk=1 << 30, counts=counts, gene_column=gene_column)
    try:
        labels = {column: {"values": values, "missing": dataset.obs_missing.get(column, 0)}
                  for column, values in dataset.obs_value_counts.items()}
        likely, others = sort_obs_columns(labels, dataset.layout.get("obs_columns") or {}, label_column)
        facts = {
            "data": data_url, "cells": dataset.n_cells, "genes": len(dataset.genes),
            "layout": dataset.layout,
            "labels": labels,  # every obs column with few enough values to count (dataset.summarise_obs)
            "label_columns": likely,
            "other_obs_columns": {"count": sum(map(len, others.values())), **others},
            "vocabulary": None, "problem": None,
        }
        try:
            facts["vocabulary"] = _vocabulary(dataset, model_name)
        except RunnerError as exc:
            facts["problem"] = str(exc)
        if label_column is not None and facts["problem"] is None:
            from helical_runner.commands.finetune import label_classes

            try:
                label_classes(dataset, label_column)
                facts["labelled"] = True
            except RunnerError as exc:
                facts["labelled"] = False
                if unlabelled_ok:  # the run annotates the file instead of fine-tuning on it
                    facts["unlabelled"] = str(exc)
                else:
                    facts["problem"] = str(exc)
        return facts
    finally:
        dataset.close()


def sort_obs_columns(labels: dict, kinds: dict[str, str], wanted: str | None = None) -> tuple[list[str], dict]:
    """(the likely label columns, the others by why not): a label column has between 2 and
    dataset.MAX_SUMMARISED_VALUES values, shared by cells (at most LABEL_SHARE distinct values per labelled
    cell; for numbers NUMERIC_LABEL_SHARE, and at most NUMERIC_LABEL_VALUES values). `kinds`
    (Layout.obs_columns: every obs column -> what it holds) names the columns that had no value counts
    (measurements, ids); `wanted` (the --label-column) is always listed with the likely ones."""
    likely: list[str] = []
    others: dict[str, list[str]] = {"one_value": [], "no_values": [], "numeric_or_per_cell": []}
    for column, info in labels.items():
        n, labelled = len(info["values"]), sum(info["values"].values())
        share, most = (NUMERIC_LABEL_SHARE, NUMERIC_LABEL_VALUES) if kinds.get(column) in ("integer", "float") \
            else (LABEL_SHARE, None)
        if column == wanted or (2 <= n <= share * labelled and (most is None or n <= most)):
            likely.append(column)
        else:
            others["no_values" if n == 0 else "one_value" if n == 1 else "numeric_or_per_cell"].append(column)
    others["numeric_or_per_cell"] += [c for c in kinds if c not in labels]
    order = {c: i for i, c in enumerate(kinds)}  # the file's column order where known
    return likely, {why: sorted(names, key=lambda c: order.get(c, len(order))) for why, names in others.items()}


def _vocabulary(dataset, model_name: str) -> dict:
    from helical_runner import models

    summary = models.family_of(model_name).vocabulary(model_name, dataset)
    if summary is None:  # a first run of a real model: the step that runs it downloads its files later
        return {"model": model_name, "note": "model files not in the cache yet: vocabulary not checked"}
    return {"model": model_name, **summary}


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
    notes = (", float counts with round-off: rounded" if layout.get("counts_round_off") else "") + \
        (", chosen by --counts" if layout["counts_forced"] else "")
    lines = [f"{facts['data']}: {facts['cells']} cells x {facts['genes']} genes",
             f"counts: {layout['counts']} ({layout['counts_encoding']}, {layout['counts_dtype']}{notes})"
             + (f"; {others}" if others else ""),
             f"X: {layout['x_encoding']}, {layout['places'].get('X', 'not looked at')}",
             *([_scratch_line(layout["scratch_bytes"])] if layout.get("scratch_bytes") else []),
             f"gene ids: {layout['gene_source']} ({'Ensembl ids' if layout['gene_kind'] == 'ensembl' else 'symbols'})"]
    vocabulary = facts.get("vocabulary")
    if vocabulary and "note" in vocabulary:
        lines[-1] += f"; {vocabulary['note']}"
    elif vocabulary:
        lines[-1] += (f"; {vocabulary['in_vocabulary']} in {vocabulary['model']}'s vocabulary, "
                      f"{vocabulary['collapsed']} collapsed into another gene's token")
    likely = facts.get("label_columns", list(facts["labels"]))
    for column in likely:
        info = facts["labels"][column]
        values = sorted(info["values"].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k} {v}" for k, v in values[:SHOWN_VALUES]) + (", ..." if len(values) > SHOWN_VALUES else "")
        lines.append(f"label column {column}: {len(values)} values ({shown})"
                     + (f"; {info['missing']} cells unlabelled" if info["missing"] else ""))
    rest = facts.get("other_obs_columns") or {}
    if not likely:
        lines.append("label columns: none likely (no obs column with a few values shared by many cells)"
                     if rest.get("count") else "label columns: none (obs has no columns)")
    if rest.get("count"):
        parts = [f"{len(names)} {what} ({_names(names)})" for what, names in (
            ("with a single value", rest["one_value"]), ("without values", rest["no_values"]),
            ("numeric QC or per-cell ids", rest["numeric_or_per_cell"])) if names]
        plural = "s" if rest["count"] > 1 else ""
        lines.append(f"{'and ' if likely else ''}{rest['count']} other obs column{plural}: {'; '.join(parts)}")
    if facts.get("unlabelled"):
        lines.append(f"unlabelled: {facts['unlabelled']} (annotated instead of fine-tuned on)")
    lines.append(f"problem: {facts['problem'] or 'none'}")
    return "\n".join(lines)


def _names(names: list[str]) -> str:
    return ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")


def check(facts: dict) -> None:
    """Raise the problem, if any, as the run would (exit 65)."""
    if facts["problem"]:
        raise InputError(facts["problem"])
