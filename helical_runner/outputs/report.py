"""The run report: `report.json`, its metrics (scikit-learn's), and the pictures beside it (training curves,
confusion matrix); report_html.py turns them into report.html."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from helical_runner.data import storage
from helical_runner.data.storage import Location

REPORT_NAME = "report.json"
ERROR_NAME = "error.json"
CURVES_NAME = "training_curves.png"
CONFUSION_NAME = "confusion_matrix.png"


def write_json(output: Location, name: str, content: dict) -> Location:
    loc = output.join(name)
    storage.put_bytes(loc, json.dumps(content, indent=1, default=_plain).encode(), "application/json")
    return loc


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] over class indices 0..n_classes-1 (scikit-learn's)."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    if len(labels) == 0:  # no validation cells (a small file): an empty matrix, as for class_metrics
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return sk_confusion(labels, predictions, labels=np.arange(n_classes)).astype(np.int64)


def class_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Per-class precision, recall, F1 and support, plus accuracy and macro-F1, by scikit-learn.

    labels, predictions: class indices into `classes`, one per cell. Classes neither in the labels nor
    predicted are left out of the table and of the macro average (scikit-learn's default label set);
    a class never predicted gets precision 0 (zero_division=0). Returns {"cells", "accuracy", "macro_f1",
    "per_class": [{"class", "precision", "recall", "f1", "support"}, ...]}; empty inputs give Nones.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if len(labels) == 0:
        return {"cells": 0, "accuracy": None, "macro_f1": None, "per_class": []}
    present = np.unique(np.concatenate([labels, predictions]))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, labels=present,
                                                                     zero_division=0)
    return {
        "cells": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(np.mean(f1)),  # = f1_score(average="macro") over the same label set
        "per_class": [{"class": classes[c], "precision": float(p), "recall": float(r), "f1": float(f),
                       "support": int(n)} for c, p, r, f, n in zip(present, precision, recall, f1, support)],
    }


def smoothed(values: list[float], span: int | None = None) -> np.ndarray:
    """Exponential moving average, bias-corrected so the first points are not pulled to 0; the span
    (default: a fiftieth of the run, 5 to 100 steps) is pandas' `ewm(span=...)`'s."""
    import pandas as pd

    span = span or int(np.clip(len(values) // 50, 5, 100))
    return pd.Series(values, dtype=float).ewm(span=span, adjust=True).mean().to_numpy()


def plot_training_curves(state_steps: dict, val_history: list[dict], path: Path) -> None:
    """Loss at every step with a smoothed line and validation loss per epoch; LR at every step;
    validation accuracy per epoch. `state_steps`: {"loss": [...], "lr": [...]}, one value per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses, lrs = state_steps.get("loss") or [], state_steps.get("lr") or []
    steps = np.arange(1, len(losses) + 1)
    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(1, 3, figsize=(15, 4))
    train, validation = "tab:blue", "tab:orange"  # the same colour for the same split in every panel
    if len(losses):
        ax_loss.plot(steps, losses, color=train, alpha=0.3, linewidth=0.8, label="train (every step)")
        ax_loss.plot(steps, smoothed(losses), color=train, linewidth=2, label="train (smoothed)")
    if len(lrs):
        ax_lr.plot(np.arange(1, len(lrs) + 1), lrs, color="tab:green")
    if val_history:
        val_steps = [v["step"] for v in val_history]
        ax_loss.plot(val_steps, [v["val_loss"] for v in val_history], marker="o", color=validation,
                     label="validation (per epoch)")
        ax_acc.plot(val_steps, [v["val_accuracy"] for v in val_history], marker="o", color=validation,
                    label="validation (per epoch)")
        ax_acc.legend()
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="Loss")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1.02))
    if len(losses) or val_history:
        ax_loss.legend()
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str = "Validation confusion matrix",
                   predicted_labels: list[str] | None = None) -> None:
    """matrix [true, predicted]; predicted_labels names the columns when they differ from the rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(matrix.shape[1]), predicted_labels or labels, rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def publish_plots(output: Location, steps: dict, val_history, matrix, labels) -> dict[str, bytes]:
    """Draw the training curves and the confusion matrix and upload them; returns {name: PNG bytes}."""
    with tempfile.TemporaryDirectory() as tmp:
        curves, confusion = Path(tmp) / CURVES_NAME, Path(tmp) / CONFUSION_NAME
        plot_training_curves(steps, val_history, curves)
        plot_confusion(matrix, labels, confusion)
        return {path.name: upload_picture(path, output) for path in (curves, confusion)}


def upload_picture(path: Path, output: Location) -> bytes:
    """Upload one picture beside the report; returns its bytes (report.html embeds them)."""
    storage.upload(path, output.join(path.name))
    return path.read_bytes()
