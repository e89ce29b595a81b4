"""The fine-tuning loop: streamed chunks in, AMP steps, a checkpoint after every chunk, exact resume.

Position in the stream is (epoch, chunks done this epoch); each epoch visits the chunks in an order
drawn from (seed, epoch), and each chunk's batches from (seed, epoch, chunk), so a resumed run replays
exactly what an uninterrupted one would have done. The checkpoint holds model, optimizer, scaler and
schedule state, the position, the held-out validation cells and torch's RNG state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from helical_runner.training.batching import make_batches, padded_tokens, padding_efficiency
from torch.nn.parallel import DistributedDataParallel

from helical_runner.training.distributed import DistContext
from helical_runner.errors import InputError
from helical_runner.training.precision import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1  # passes over the training cells
    batch_size: int = 8  # cells per optimisation step
    tokens_per_batch: int | None = None  # instead: fill each batch with cells up to this many padded tokens
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_fraction: float = 0.05  # share of training cells with linearly rising LR; then linear decay to 0
    grad_clip: float = 1.0  # max global L2 norm of the gradients
    freeze_layers: int = 0  # first N encoder layers kept fixed
    val_fraction: float = 0.1  # share of cells held out (stable hash of the cell id)
    max_val_cells: int = 2000  # held-out cells kept in memory for evaluation
    length_bucketing: bool = True  # batch cells of similar length together
    # Dropout on attention probabilities while training; None keeps the model's own (Geneformer: 0.02).
    # Any non-zero rate sends SDPA to its unfused math path on CPU, which materialises every
    # [batch, heads, seq, seq] score matrix: half the speed and 1.9x the memory for a 0.02 regulariser.
    attention_dropout: float | None = 0.0
    # Dropout on the encoder's hidden states (embeddings and every sublayer's output); None keeps the model's
    # own (Geneformer: 0.02). Off by default, as in helical's train(), which runs the backbone in eval mode;
    # on CPU its masks cost about a tenth of an fp32 step. The head's dropout stays (helical's head has it too).
    hidden_dropout: float | None = 0.0
    head_dropout: float | None = None  # dropout before the head; None keeps the family's (0.02 for both)
    seed: int = 0  # chunk order, batch order, head init, dropout


def merge_config(base: TrainConfig, **overrides) -> TrainConfig:
    """`base` with the given overrides; None means "not given", unknown names and bad values are errors."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    merged = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    checks = [(merged.epochs >= 1, "epochs must be at least 1"),
              (merged.batch_size >= 1, "batch size must be at least 1"),
              (merged.tokens_per_batch is None or merged.tokens_per_batch >= 1, "tokens per batch must be at least 1"),
              (merged.lr > 0, "learning rate must be positive"),
              (0 <= merged.val_fraction < 1, "validation fraction must be in [0, 1)"),
              (0 <= merged.warmup_fraction < 1, "warmup fraction must be in [0, 1)"),
              (merged.freeze_layers >= 0, "freeze layers must be 0 or more"),
              (merged.attention_dropout is None or 0 <= merged.attention_dropout < 1,
               "attention dropout must be in [0, 1)"),
              (merged.hidden_dropout is None or 0 <= merged.hidden_dropout < 1,
               "hidden dropout must be in [0, 1)"),
              (merged.head_dropout is None or 0 <= merged.head_dropout < 1, "head dropout must be in [0, 1)")]
    for ok, message in checks:
        if not ok:
            raise InputError(f"{message} (got {asdict(merged)})")
    return merged


@dataclass
class PreparedChunk:
    """A chunk tokenized and split, ready for the loop (built on the prefetch thread)."""

    index: int
    train_ids: list[np.ndarray]
    train_lengths: np.ndarray
    train_labels: np.ndarray
    val_ids: list[np.ndarray]
    val_labels: np.ndarray
    dropped: int  # cells without tokens or without a label


@dataclass
class TrainState:
    epoch: int = 0
    chunk_pos: int = 0  # chunks finished in the current epoch
    step: int = 0
    cells_seen: int = 0  # training cells through the model, summed over epochs
    cells_dropped: int = 0
    train_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # one entry per chunk
    # one value per optimisation step (the global batch's mean loss, the LR it was taken with): plain
    # float lists, a few bytes a step in the checkpoint, for the curves that show every step
    step_losses: list[float] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)
    val_history: list[dict] = field(default_factory=list)  # one entry per epoch
    val_ids: list[np.ndarray] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    padded_tokens: int = 0
    real_tokens: int = 0
    resumed_from: dict | None = None


def linear_warmup_decay(total: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor at position i of `total` (cells, here): rising over the warmup share, then falling to 0."""
    warmup = max(1, int(total * warmup_fraction))

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return max(0.0, (total - i) / max(1, total - warmup))

    return factor


class Trainer:
    """Optimizer, learning-rate schedule and scaler around a model, with one step and one evaluation."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, precision: Precision, total_cells: int,
                 dist: DistContext | None = None):
        """`model`: a family's classifier (models.BaseModel.classifier): `collate(cells, device)` gives the
        inputs of its forward (logits) and embed (pooled cell embeddings), `classifier` is its head."""
        self.dist = dist or DistContext()
        self.core = model  # the bare model: state dicts and inference never see the DDP wrapper
        self.model = model
        if self.dist.enabled:
            device_ids = [precision.device.index] if precision.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=device_ids)
        self.config = config
        self.precision = precision
        params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over all tensors instead of ~10 ops per tensor: ~6 ms vs ~45 ms a step here
        # (CPU, 10M parameters), the same update to float rounding. CPU and CUDA both have the kernel.
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                           fused=precision.device.type in ("cpu", "cuda"))
        # The schedule runs over cells, not steps: with a token budget the number of steps is only known once
        # every chunk is tokenized, and with a fixed batch size the two are the same schedule.
        self.schedule = linear_warmup_decay(total_cells, config.warmup_fraction)
        self.cells_done = 0
        self.scaler = precision.grad_scaler()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, input_ids: list[np.ndarray], labels: np.ndarray) -> tuple[float, int]:
        """One optimisation step on a global batch; returns (mean loss, correct predictions) over it.

        With N ranks each takes cells rank, rank+N, ... and weights its mean loss by its share, so DDP's
        gradient average equals the gradient of the whole batch's mean loss."""
        rank, world = self.dist.rank, self.dist.world
        mine = list(range(rank, len(input_ids), world)) or [0]  # a rank with no cell still joins the all-reduce
        weight = (len(range(rank, len(input_ids), world)) / len(input_ids)) * world
        device = self.precision.device
        inputs = self.core.collate([input_ids[i] for i in mine], device)
        target = torch.as_tensor(np.asarray(labels)[mine], dtype=torch.long, device=device)
        self.model.train()
        with self.precision.autocast():
            logits = self.model(*inputs)
        per_cell = F.cross_entropy(logits.float(), target, reduction="none")
        loss = per_cell.mean() * weight
        self.optimizer.param_groups[0]["lr"] = self.config.lr * self.schedule(self.cells_done + len(input_ids) - 1)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(self.core.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)  # skipped by the scaler when gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.cells_done += len(input_ids)
        counted = weight > 0
        loss_sum, hits = self.dist.all_sum([float(per_cell.detach().sum()) if counted else 0.0,
                                            float((logits.argmax(dim=1) == target).sum()) if counted else 0.0])
        return loss_sum / len(input_ids), int(hits)

    @torch.no_grad()
    def predict(self, input_ids: list[np.ndarray], batch_size: int, embeddings: bool = False):
        """Class probabilities [cells, classes] float32, batched by length to limit padding; with
        `embeddings`, also the cell embeddings [cells, hidden] float32 the head saw (see model.embed)."""
        probs = np.zeros((len(input_ids), self.core.classifier.out_features), dtype=np.float32)
        embs = np.zeros((len(input_ids), self.core.classifier.in_features), dtype=np.float32) if embeddings else None
        for batch, pooled in encode(self.core, input_ids, batch_size, self.precision):
            with self.precision.autocast():
                logits = self.core.classifier(pooled)  # dropout is the identity in eval mode
            probs[batch] = torch.softmax(logits.float(), dim=1).cpu().numpy()
            if embs is not None:
                embs[batch] = pooled.float().cpu().numpy()
        return (probs, embs) if embeddings else probs

    def state_dict(self) -> dict:
        return {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": {"cells_done": self.cells_done}, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.cells_done = int(state["schedule"]["cells_done"])
        self.scaler.load_state_dict(state["scaler"])


def encode(core, input_ids: list[np.ndarray], batch_size: int, precision: Precision):
    """Yield (cell positions [b], pooled cell embeddings [b, hidden] on the device) for every cell, in
    batches of similar length (less padding), in eval mode without gradients. `core.embed(*core.collate(
    cells, device))` is the family's encoder + pooling (e.g. geneformer.network.GeneformerClassifier)."""
    core.eval()
    order = np.argsort(np.array([len(x) for x in input_ids]), kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs = core.collate([input_ids[i] for i in batch], precision.device)
            with precision.autocast():
                yield batch, core.embed(*inputs)


def chunk_order(seed: int, epoch: int, n_chunks: int) -> list[int]:
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_chunks)]


def estimate_training_cells(chunk_sizes: Iterable[int], config: TrainConfig) -> int:
    """Cells the schedule spans: all epochs, less the validation share (a hash split, so about that share)."""
    per_epoch = sum(math.ceil(n * (1 - config.val_fraction)) for n in chunk_sizes)
    return max(1, per_epoch * config.epochs)


def fit(trainer: Trainer, n_chunks: int, prepare: Callable[[int], PreparedChunk], state: TrainState,
        save_checkpoint: Callable[[TrainState], None], progress: Callable[..., None],
        prefetch: Callable[[list[Callable[[], PreparedChunk]]], Iterable[PreparedChunk]]) -> TrainState:
    """Train from `state`'s position to the end, checkpointing after every chunk."""
    config = trainer.config
    for epoch in range(state.epoch, config.epochs):
        order = chunk_order(config.seed, epoch, n_chunks)
        remaining = order[state.chunk_pos:]
        chunks = iter(prefetch([lambda i=i: prepare(i) for i in remaining]))
        for _ in remaining:
            waited = time.monotonic()
            chunk = next(chunks)
            state.data_wait_seconds += time.monotonic() - waited
            _train_chunk(trainer, chunk, epoch, state, progress, started=waited)
            state.chunk_pos += 1
            progress(chunks_done=epoch * n_chunks + state.chunk_pos)
            save_checkpoint(state)
        _evaluate_epoch(trainer, epoch, state, progress)
        state.epoch, state.chunk_pos = epoch + 1, 0
        save_checkpoint(state)
    return state


def _train_chunk(trainer: Trainer, chunk: PreparedChunk, epoch: int, state: TrainState,
                 progress: Callable[..., None], started: float) -> None:
    config = trainer.config
    state.cells_dropped += chunk.dropped if epoch == 0 else 0
    if epoch == 0 and len(state.val_labels) < config.max_val_cells:
        room = config.max_val_cells - len(state.val_labels)
        state.val_ids.extend(chunk.val_ids[:room])
        state.val_labels.extend(int(x) for x in chunk.val_labels[:room])
    rng = np.random.default_rng([config.seed, epoch, chunk.index])
    batches = make_batches(chunk.train_lengths, config.batch_size, rng, config.length_bucketing,
                           config.tokens_per_batch)
    state.real_tokens += int(chunk.train_lengths.sum())
    state.padded_tokens += padded_tokens(chunk.train_lengths, batches)
    losses, correct = [], 0
    for batch in batches:
        loss, hits = trainer.step([chunk.train_ids[i] for i in batch], chunk.train_labels[batch])
        losses.append(loss)
        correct += hits
        state.step += 1
        state.step_losses.append(float(loss))
        state.step_lrs.append(trainer.lr)
        state.cells_seen += len(batch)
        progress(step=state.step, cells=state.cells_seen, loss=loss, lr=trainer.lr, epoch=epoch + 1)
    elapsed = time.monotonic() - started
    state.train_seconds += elapsed
    n = len(chunk.train_labels)
    entry = {"epoch": epoch + 1, "chunk": chunk.index, "step": state.step, "cells": n,
             "loss": float(np.mean(losses)) if losses else None,
             "train_accuracy": correct / n if n else None, "lr": trainer.lr,
             "cells_per_second": n / elapsed if elapsed > 0 else None,
             "padding_efficiency": padding_efficiency(chunk.train_lengths, batches) if batches else None}
    state.history.append(entry)
    progress(cells_per_second=entry["cells_per_second"] or 0.0)
    log.info("epoch %d/%d chunk %d: %d cells, loss %.4f, train acc %.3f, lr %.2e, %.1f cells/s",
             epoch + 1, config.epochs, chunk.index, n, entry["loss"] or float("nan"),
             entry["train_accuracy"] or 0.0, trainer.lr, entry["cells_per_second"] or 0.0)


def _evaluate_epoch(trainer: Trainer, epoch: int, state: TrainState, progress: Callable[..., None]) -> None:
    if not state.val_labels:
        log.warning("no validation cells held out: accuracy is not measured")
        return
    probs = trainer.predict(state.val_ids, trainer.config.batch_size * 4)
    labels = np.asarray(state.val_labels)
    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels)))
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    # scikit-learn's macro average over the classes seen or predicted, as report.json's class_metrics
    macro_f1 = float(f1_score(labels, probs.argmax(axis=1), average="macro", zero_division=0))
    state.val_history.append({"epoch": epoch + 1, "step": state.step, "val_loss": loss,
                              "val_accuracy": accuracy, "val_macro_f1": macro_f1, "val_cells": len(labels)})
    progress(val_accuracy=accuracy, val_loss=loss, val_macro_f1=macro_f1)
    log.info("epoch %d: validation loss %.4f, accuracy %.3f on %d held-out cells", epoch + 1, loss, accuracy,
             len(labels))
