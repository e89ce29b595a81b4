"""The benchmarks of issues 2 and 6, one function each; every figure is a ratio of two sides measured
in the same run (timed sides interleaved A, B, A, B, medians compared).

Each function takes the run's Context and returns rows for the table (see bench/common.py).
"""

from __future__ import annotations

import json
import shutil
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

from bench.common import MODEL, PYTHON, Context, Row, data_dir, free_port, gib, log, median, spread, wait_port

# What each size runs. "full" is the setting; "small" checks the scripts in a few minutes.
SIZES = {
    "small": {
        "memory_cells": (4_000, 16_000), "memory_genes_per_cell": 2_000, "memory_finetune_chunks": 2,
        "train_cells": 48, "train_genes_per_cell": 800, "reps": 2,
        "padding_cells": 4_000,
        "stream_cells": 96, "stream_chunk": 24, "stream_reps": 2,
        "predict_cells": 96,
        "first_step_cells": 4_000,
        "layout_cells": (4_000, 16_000), "layout_genes_per_cell": 500, "ranged_reps": 2,
        # scGPT at 12 layers, width 512 (~1 s a cell embedded, ~3-6 s a cell trained on 2 busy cores): 24
        # cells are two steps of 12; the two groups take ~20 min here
        "scgpt_embed_cells": 96, "scgpt_train_cells": 24,
    },
    "full": {
        "memory_cells": (50_000, 200_000), "memory_genes_per_cell": 2_000, "memory_finetune_chunks": 2,
        # the reference point is 1,600 cells (--train-cells 1600: ~6 min a runner pass, ~9 min a
        # helical one on a quiet 2-core machine); 96 cells (8 steps of 12) keep `make bench` short
        "train_cells": 96, "train_genes_per_cell": 800, "reps": 2,
        "padding_cells": 20_000,
        # 20 chunks: the first, which nothing can prefetch, must not be the whole measurement (with 4
        # chunks its ~60 ms read was 5-10% of a 1 s run of this light model)
        "stream_cells": 1_200, "stream_chunk": 60, "stream_reps": 3,
        # enough cells that inference, not imports and model loading, is most of both sides' wall time
        "predict_cells": 400,
        "first_step_cells": 20_000,
        # counts in X as CSR and as CSC, and in raw/X; 500 genes a cell keeps the in-memory CSC conversion that
        # makes the test file (not the runner) within this machine's memory
        "layout_cells": (50_000, 200_000), "layout_genes_per_cell": 500, "ranged_reps": 3,
        # scGPT at helical's default size (12 layers, width 512): 200 cells leave model loading a few percent
        # of an embed run (~3 min a side); 48 cells are 4 steps of 12, ~2.5 min for the runner's default side
        # and ~4.5 min for each of the other two on 2 cores (~45 min for both groups)
        "scgpt_embed_cells": 200, "scgpt_train_cells": 48,
    },
}

CHUNK_DONE = "INFO helical_runner.training.loop: epoch 1/1 chunk "  # the loop's log line after each chunk
CELLS_PER_CHUNK = 2_000  # cpu-small's chunk size: what the memory benchmark streams with
BATCH = 12  # the reference batch size
TOKEN_BUDGET = 16_384  # --tokens-per-batch of the padding benchmark: 4 cells of 4,096 tokens, 80 of 200
TINY = {"layers": 2, "hidden": 64, "heads": 4}  # memory benchmark: the data path, not the model, is measured
STREAM_TOKENS = 256  # streaming benchmark: short cells keep the training step short
BENCH_MODEL = {"layers": 6, "hidden": 256, "heads": 4}  # the random 6-layer, 256-hidden model
GENES = 19_000  # genes measured by the synthetic files: most of the stand-in's ~19,400 real protein-coding genes
PREDICT_BATCH = 24  # cells per forward pass on both sides: helical's default batch_size (ours: --batch-size x 4)


# --- inputs, cached outside the clone ---------------------------------------------------------------

def ensure_model(ctx: Context, layers: int, hidden: int, heads: int, attention_dropout: float = 0.02) -> Path:
    """A random Geneformer in its own helical cache prefix, with Geneformer's dropout (0.02 on hidden
    states and on attention probabilities) unless attention_dropout says otherwise."""
    prefix = data_dir() / "models" / f"gf-{layers}L-{hidden}h-{heads}a-dropout0.02-attn{attention_dropout:g}"
    marker = prefix / ".complete"
    if not marker.exists():
        log(f"writing a random {layers}-layer, {hidden}-hidden Geneformer to {prefix}")
        shutil.rmtree(prefix, ignore_errors=True)
        ctx.child("model", "model", "--prefix", str(prefix), "--model", MODEL, "--layers", str(layers),
                  "--hidden", str(hidden), "--heads", str(heads), "--dropout", "0.02",
                  "--attention-dropout", str(attention_dropout)).check()
        marker.touch()
    return prefix


def ensure_scgpt(ctx: Context, layers: int, width: int, heads: int) -> Path:
    """A random scGPT (scGPT's dropout 0.2, d_hid = width) in its own helical cache prefix."""
    prefix = data_dir() / "models" / f"scgpt-{layers}L-{width}w-{heads}a"
    marker = prefix / ".complete"
    if not marker.exists():
        log(f"writing a random {layers}-layer, width-{width} scGPT to {prefix}")
        shutil.rmtree(prefix, ignore_errors=True)
        ctx.child("scgpt-model", "scgpt-model", "--prefix", str(prefix), "--layers", str(layers),
                  "--width", str(width), "--heads", str(heads)).check()
        marker.touch()
    return prefix


def ensure_h5ad(ctx: Context, cells: int, genes_per_cell: int, seed: int, layout: str = "csr") -> Path:
    """A cached synthetic file; layout csr (counts in X), csc (X stored CSC) or raw (counts in raw/X)."""
    stem = f"cells-{cells}-genes-{GENES}-gpc-{genes_per_cell}-seed-{seed}"
    path = data_dir() / (f"{stem}.h5ad" if layout == "csr" else f"{stem}-{layout}.h5ad")
    if not path.exists():
        log(f"generating {path.name} (cached for later runs)")
        ctx.child("data", "data", "--output", str(path), "--cells", str(cells), "--genes", str(GENES),
                  "--genes-per-cell", str(genes_per_cell), "--seed", str(seed), "--layout", layout,
                  timeout=7200).check()
    return path


def ensure_varlen_h5ad(ctx: Context, cells: int, seed: int = 3) -> Path:
    path = data_dir() / f"varlen-{cells}-genes-20000-median-800-seed-{seed}-symbols.h5ad"
    if not path.exists():
        log(f"generating {path.name} (cached for later runs)")
        ctx.child("varlen-data", "varlen-data", "--output", str(path), "--cells", str(cells),
                  "--seed", str(seed)).check()
    return path


def read_report(prefix: Path) -> dict:
    return json.loads((prefix / "report.json").read_text())


# --- 1. memory: chunk and finetune at 50k vs 200k cells, beside anndata.read_h5ad -----------------------

def bench_memory(ctx: Context) -> list[Row]:
    small_n, big_n = ctx.params["memory_cells"]
    gpc = ctx.params["memory_genes_per_cell"]
    prefix = ensure_model(ctx, **TINY)
    files = {n: ensure_h5ad(ctx, n, gpc, seed=0) for n in (small_n, big_n)}
    work = data_dir() / "work"
    stop = ctx.params["memory_finetune_chunks"]
    rss: dict[tuple[str, int], int] = {}
    seconds: dict[tuple[str, int], float] = {}
    for n in (small_n, big_n):
        chunks = work / f"chunks-{n}"
        shutil.rmtree(chunks, ignore_errors=True)
        log(f"memory: chunk {n:,} cells")
        result = ctx.runner(f"chunk-{n}", "chunk", "--input", str(files[n]), "--output", str(chunks),
                            "--cells-per-chunk", str(CELLS_PER_CHUNK), "--profile", "cpu-large").check()
        rss["chunk", n], seconds["chunk", n] = result.peak_rss_bytes, result.seconds
        log(f"memory: finetune on the {n:,}-cell manifest (tiny model, 64 tokens a cell), stopped after "
            f"{stop} chunks")
        out = ctx.results / f"memory-finetune-{n}"
        shutil.rmtree(out, ignore_errors=True)
        result = ctx.runner(f"finetune-{n}", "finetune", "--data", str(chunks / "manifest.json"),
                            "--label-column", "cell_type", "--output", str(out), "--model", MODEL,
                            "--profile", "cpu-large", "--precision", "fp32", "--batch-size", "64",
                            "--max-input-size", "64", "--epochs", "1", stop_after=(CHUNK_DONE, stop),
                            CACHE_DIR_HELICAL_PREFIX=str(prefix)).check()
        rss["finetune", n], seconds["finetune", n] = result.peak_rss_bytes, result.seconds
        shutil.rmtree(chunks, ignore_errors=True)
        log(f"memory: anndata.read_h5ad of {n:,} cells")
        result = ctx.child(f"read-h5ad-{n}", "read-h5ad", "--path", str(files[n])).check()
        rss["read_h5ad", n], seconds["read_h5ad", n] = result.peak_rss_bytes, result.seconds

    size = {n: files[n].stat().st_size for n in files}
    label = f"{big_n // 1000}k vs {small_n // 1000}k cells"
    rows = []
    for what, title in (("chunk", "`helical-runner chunk`"), ("finetune", "`helical-runner finetune` (fp32)")):
        ratio = rss[what, big_n] / rss[what, small_n]
        rows.append(Row("1. Memory", f"peak RSS of {title}, {label}", gib(rss[what, big_n]), gib(rss[what, small_n]),
                        ratio, "< 1.15", ratio < 1.15,
                        f"{seconds[what, big_n]:.0f} s and {seconds[what, small_n]:.0f} s wall" if what == "chunk" else
                        f"from the chunk manifest (chunks of {CELLS_PER_CHUNK}), tiny 2-layer 64-hidden model, cells cut "
                        f"to 64 tokens, batch 64; the full-size run is stopped (SIGTERM) once {stop} chunks have "
                        f"trained, so the peak covers opening the whole dataset and {stop} chunks of training"))
    ratio = rss["read_h5ad", big_n] / rss["read_h5ad", small_n]
    rows.append(Row("1. Memory", f"peak RSS of `anndata.read_h5ad` (whole file), {label}", gib(rss["read_h5ad", big_n]),
                    gib(rss["read_h5ad", small_n]), ratio, "(reference)", None,
                    f"files of {size[big_n] / 1e9:.2f} GB and {size[small_n] / 1e9:.2f} GB"))
    for what, title in (("chunk", "chunk"), ("finetune", "finetune")):
        ratio = rss[what, big_n] / rss["read_h5ad", big_n]
        rows.append(Row("1. Memory", f"peak RSS of {title} vs `read_h5ad`, {big_n // 1000}k cells",
                        gib(rss[what, big_n]), gib(rss["read_h5ad", big_n]), ratio, "(reference)", None))
    return rows


# --- 2. training throughput: the runner's loop vs helical's GeneformerFineTuningModel.train -----------------

def _runner_train(ctx: Context, name: str, data: Path, n: int, prefix: Path, *flags: str) -> tuple[float, int]:
    """(cells/s of the training phase, peak RSS) of one `helical-runner finetune` over one chunk of n cells."""
    out = ctx.results / name
    shutil.rmtree(out, ignore_errors=True)
    result = ctx.runner(name, "finetune", "--data", str(data), "--label-column", "cell_type", "--output", str(out),
                        "--model", MODEL, "--profile", "cpu-small", "--precision", "fp32", "--batch-size", str(BATCH),
                        "--cells-per-chunk", str(n), "--max-input-size", "4096", "--val-fraction", "0",
                        "--epochs", "1", *flags, CACHE_DIR_HELICAL_PREFIX=str(prefix)).check()
    report = read_report(out)
    # one chunk holds every cell, so its data wait is the read + tokenization before the first step:
    # excluded, as helical's process_data is excluded on its side
    train = report["durations"]["train_seconds"] - report["durations"]["data_wait_seconds"]
    return report["cells"]["trained_total"] / train, result.peak_rss_bytes


def bench_throughput(ctx: Context) -> list[Row]:
    n = ctx.params["train_cells"]
    prefix = ensure_model(ctx, **BENCH_MODEL)  # Geneformer's dropout (0.02) in config.json; both sides train
    # the encoder without it: helical in eval mode, the runner by its defaults (TrainConfig.*_dropout = 0)
    data = ensure_h5ad(ctx, n, ctx.params["train_genes_per_cell"], seed=1)
    sides = {"ours": ([], []), "dropout": ([], []), "helical": ([], []), "tokens": ([], [])}
    for rep in range(ctx.reps):
        log(f"throughput rep {rep + 1}/{ctx.reps}: runner on {n} cells")
        cps, rss = _runner_train(ctx, f"throughput-runner-{rep}", data, n, prefix)
        sides["ours"][0].append(cps), sides["ours"][1].append(rss)
        log(f"throughput rep {rep + 1}/{ctx.reps}: runner with Geneformer's dropout on {n} cells")
        cps, rss = _runner_train(ctx, f"throughput-runner-dropout-{rep}", data, n, prefix, "--hidden-dropout", "-1")
        sides["dropout"][0].append(cps), sides["dropout"][1].append(rss)
        log(f"throughput rep {rep + 1}/{ctx.reps}: helical on {n} cells")
        result = ctx.child(f"throughput-helical-{rep}", "helical-train", "--path", str(data), "--model", MODEL,
                           "--hidden", str(BENCH_MODEL["hidden"]), "--batch-size", str(BATCH),
                           "--freeze-layers", "0", CACHE_DIR_HELICAL_PREFIX=str(prefix)).check()
        sides["helical"][0].append(result.output["cells_per_second"]), sides["helical"][1].append(result.peak_rss_bytes)
        sides["tokens"][0].append(result.output["mean_tokens"])
    ours, dropout, theirs = sides["ours"], sides["dropout"], sides["helical"]
    # the bar is judged on the same computation: helical's train() keeps scGPT's dropout on, so ours does too
    ratio = median(dropout["loop"]) / median(theirs["loop"])
    size = "" if ctx.size == "full" else f" (size {ctx.size}: {n} cells, {-(-n // BATCH)} steps)"
    setting = (f"{n} labelled cells of 100-4,000 expressed genes (log-normal, median 800; scGPT samples 1,199 of "
               f"longer ones){size}, the same random scGPT of helical's default size ({SCGPT_SHAPE['layers']} "
               f"layers, width {SCGPT_SHAPE['width']}, {SCGPT_SHAPE['heads']} heads), fp32, CPU, 2 threads, batch "
               f"{BATCH}, one epoch, all layers trained, a linear head on the mean of the positions after <cls> on "
               "both sides (helical's mean includes the batch's padding); helical's batches are consecutive cells "
               "padded to the longest, ours cells of similar length. Ours: report.json train_seconds - "
               "data_wait_seconds (first step to last step, one chunk, --val-fraction 0); helical: wall time of "
               "`train()` alone (model load and process_data excluded)")
    return [
        Row("11. scGPT fine-tuning", "cells/s: `finetune --model scGPT_CP` with scGPT's dropout 0.2 (what "
            "helical's train mode applies) vs helical scGPTFineTuningModel.train", spread(dropout["loop"]),
            spread(theirs["loop"]), ratio, ">= 1.5", ratio >= 1.5,
            f"{setting}. Ours with `--hidden-dropout -1 --attention-dropout -1` (the model's own rates)"),
        Row("11. scGPT fine-tuning", "cells/s: `finetune --model scGPT_CP` with the runner's defaults (no dropout "
            "in the encoder) vs helical", spread(ours["loop"]), spread(theirs["loop"]),
            median(ours["loop"]) / median(theirs["loop"]), "(reference)", None,
            "TrainConfig's attention and hidden dropout 0: what a user gets without flags"),
        Row("11. scGPT fine-tuning", "cells/s end to end: `finetune` (defaults) vs helical read_h5ad + "
            "process_data + train + torch.save", spread(ours["e2e"]), spread(theirs["e2e"]),
            median(ours["e2e"]) / median(theirs["e2e"]), "(reference)", None,
            "each side's whole child process: imports, model load, reading, tokenizing, training, saving (ours "
            "also writes report.json, report.html and its plots)"),
    ]


BENCHMARKS = {
    "memory": bench_memory,
    "throughput": bench_throughput,
    "padding": bench_padding,
    "streaming": bench_streaming,
    "gpu": bench_gpu,
    "predict": bench_predict,
    "first_step": bench_first_step,
    "layouts": bench_layouts,
    "chunk_s3": bench_chunk_s3,
    "embed": bench_embed,
    "embed_scgpt": bench_embed_scgpt,
    "finetune_scgpt": bench_finetune_scgpt,
}
