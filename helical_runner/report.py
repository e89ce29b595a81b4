"""The run report: `report.json` plus two pictures (training curves, confusion matrix) beside it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from helical_runner import storage
from helical_runner.storage import Location

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
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_training_curves(history: list[dict], val_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h["step"] for h in history if h["loss"] is not None]
    train, validation = "tab:blue", "tab:orange"  # the same colour for the same split in both panels
    ax_loss.plot(steps, [h["loss"] for h in history if h["loss"] is not None], marker=".", color=train,
                 label="train (chunk mean)")
    ax_acc.plot(steps, [h["train_accuracy"] for h in history if h["loss"] is not None], marker=".", color=train,
                label="train (chunk)")
    if val_history:
        val_steps = [v["step"] for v in val_history]
        ax_loss.plot(val_steps, [v["val_loss"] for v in val_history], marker="o", color=validation, label="validation")
        ax_acc.plot(val_steps, [v["val_accuracy"] for v in val_history], marker="o", color=validation,
                    label="validation")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="Loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="Validation confusion matrix")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def publish_plots(output: Location, history, val_history, matrix, labels) -> list[str]:
    """Draw both pictures and upload them; returns their names."""
    with tempfile.TemporaryDirectory() as tmp:
        curves, confusion = Path(tmp) / CURVES_NAME, Path(tmp) / CONFUSION_NAME
        plot_training_curves(history, val_history, curves)
        plot_confusion(matrix, labels, confusion)
        storage.upload(curves, output.join(CURVES_NAME))
        storage.upload(confusion, output.join(CONFUSION_NAME))
    return [CURVES_NAME, CONFUSION_NAME]
