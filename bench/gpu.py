"""`make bench-gpu`: fp16 AMP vs fp32 vs bf16 fine-tuning on gf-12L-38M-i4096's shape, and data parallel.

    python3 -m bench.gpu [--steps 100] [--batch-size 16] [--tokens 2048] [--json results.json]

Runs the runner's own loop (`training.fit` over a prepared chunk, `Trainer.step` with autocast and the
GradScaler) on a randomly initialised encoder of the model's shape, fed synthetic token batches whose
class shows in a few marker tokens near the top of each cell's ranking, so the loss falls and the
precisions' loss curves can be compared step by step from the same initial weights and batches. Per
precision: median step time, real tokens/s, peak CUDA memory (`torch.cuda.max_memory_allocated`), the
mean loss of the last steps and the largest per-step loss gap to fp32. Then, with more than one visible
GPU, the same loop as one process per GPU (DistributedDataParallel, NCCL): tokens/s against N times one GPU's.

Made for a bare, offline GPU host: it imports torch, transformers, numpy and the runner's model and
training modules only (no helical, anndata or boto3), so the repository's files are all it needs.
Without a CUDA device it prints "no CUDA device" and exits 0; `--device cpu` with a small shape runs the
same code on a CPU (how the tests check it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# gf-12L-38M-i4096: helical's GeneformerConfig.model_map gives embsize 512, input_size 4096, <cls>/<eos> (v2),
# the name 12 layers; the published config.json 8 heads, intermediate 1024, ReLU, dropout 0.02 and the
# 20,275-token vocabulary (12 x 2.1M encoder + 12.5M embedding parameters: the name's 38M)
SHAPE = {"layers": 12, "hidden": 512, "heads": 8, "intermediate": 1024, "vocab": 20_275, "positions": 4096}
SPECIAL = {"pad": 0, "mask": 1, "cls": 2, "eos": 3}
N_CLASSES = 8
MARKERS = 4  # marker tokens per class, placed among a cell's top-ranked genes
LAST = 5  # steps averaged for "final loss"
# a shape small enough for a CPU: the "no CUDA device" line suggests it
CPU_EXAMPLE = ("--device cpu --layers 2 --hidden 64 --heads 4 --intermediate 128 --tokens 128 --positions 256 "
               "--batch-size 4 --warmup 1 --steps 5")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: CUDA, or say there is none and exit 0")
    p.add_argument("--precisions", default="fp32,fp16,bf16", help="first is the reference for loss agreement")
    p.add_argument("--batch-size", type=int, default=16, help="cells per step (per process with --processes)")
    p.add_argument("--tokens", type=int, default=2048, help="median tokens a cell (log-normal, clipped to the input size)")
    p.add_argument("--steps", type=int, default=100, help="measured steps per precision")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing starts (kernel selection, allocator)")
    p.add_argument("--processes", type=int, help="data-parallel processes (default: every visible GPU; 1 on CPU)")
    p.add_argument("--dp-precision", default="fp16", help="precision of the data-parallel run (the GPU profiles')")
    for name, value in SHAPE.items():
        p.add_argument(f"--{name}", type=int, default=value, help="model shape")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank-result", help=argparse.SUPPRESS)  # set on data-parallel ranks by the parent
    args = p.parse_args(argv)
    from helical_runner.training.precision import DTYPES as PRECISIONS  # the runner's --precision names

    unknown = [name for name in args.precisions.split(",") + [args.dp_precision] if name not in PRECISIONS]
    if unknown:
        p.error(f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    return args


def synthetic_cells(args, n: int, seed: int):
    """n cells of token ids (<cls> genes <eos>) with log-normal lengths, and their class labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(args.tokens), 0.3, size=n), 64, args.positions).astype(int)
    labels = rng.integers(0, N_CLASSES, size=n)
    first_gene = len(SPECIAL)
    markers = first_gene + np.arange(N_CLASSES * MARKERS).reshape(N_CLASSES, MARKERS)
    cells = []
    for length, label in zip(lengths, labels):
        genes = rng.integers(first_gene + markers.size, args.vocab, size=length - 2)
        spots = rng.choice(min(32, length - 2), size=min(MARKERS, length - 2), replace=False)
        genes[spots] = markers[label][: len(spots)]
        cells.append(np.concatenate([[SPECIAL["cls"]], genes, [SPECIAL["eos"]]]).astype(np.int64))
    return cells, lengths.astype(np.int64), labels.astype(np.int64)


def build_model(args, seed: int):
    """A random encoder of the model's shape with a classification head, as finetune builds it."""
    import torch
    from transformers import BertConfig, BertModel

    from helical_runner.models.geneformer.network import GeneformerClassifier

    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        max_position_embeddings=args.positions, pad_token_id=SPECIAL["pad"], hidden_act="relu",
                        hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02)
    config._attn_implementation = "sdpa"  # as model.load_encoder asks for it
    torch.manual_seed(seed)
    net = GeneformerClassifier(BertModel(config, add_pooling_layer=False), N_CLASSES, special_token=True,
                               dropout=0.0, pad_id=SPECIAL["pad"])
    # finetune's defaults (TrainConfig.attention_dropout/hidden_dropout = 0): no random masks, so every
    # precision sees the same computation and only rounding separates their losses
    net.set_attention_dropout(0.0)
    net.set_hidden_dropout(0.0)
    return net


def train(args, precision_name: str, device, dist=None) -> dict:
    """The runner's fit() over one prepared chunk of steps x batch cells; per-step times and losses."""
    import numpy as np
    import torch

    from helical_runner.training.precision import resolve
    from helical_runner.training.loop import PreparedChunk, Trainer, TrainConfig, TrainState, fit

    world = dist.world if dist else 1
    batch = args.batch_size * world  # global batch: each process trains batch_size cells of it
    n = (args.warmup + args.steps) * batch
    ids, lengths, labels = synthetic_cells(args, n, args.seed)
    chunk = PreparedChunk(index=0, train_ids=ids, train_lengths=lengths, train_labels=labels, val_ids=[],
                          val_labels=np.zeros(0, dtype=np.int64), dropped=0)
    net = build_model(args, args.seed).to(device)
    config = TrainConfig(batch_size=batch, lr=1e-4, val_fraction=0.0, seed=args.seed)
    trainer = Trainer(net, config, resolve(precision_name, device), n, dist)
    stamps, losses = [], []

    def progress(**values) -> None:
        if "step" in values:  # after each step; Trainer.step has already synced (it reads the loss)
            stamps.append(time.perf_counter())
            losses.append(float(values["loss"]))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    fit(trainer, 1, lambda i: chunk, TrainState(), lambda state: None, progress,
        lambda loaders: (load() for load in loaders))
    # fit shuffles batches, so recover each step's tokens from the order the loop used
    order = _batch_tokens(lengths, batch, args.seed)
    times = np.diff([started] + stamps)
    measured = slice(args.warmup, None)
    result = {
        "precision": precision_name, "processes": world, "global_batch": batch,
        "step_seconds": float(np.median(times[measured])),
        "tokens_per_second": float(sum(order[measured]) / times[measured].sum()),
        "losses": losses, "final_loss": float(np.mean(losses[-LAST:])),
        "mean_tokens": float(lengths.mean()),
        "scaler_scale": float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None,
    }
    if device.type == "cuda":
        result["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    del trainer, net
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _batch_tokens(lengths, batch: int, seed: int) -> list[int]:
    """Real tokens of each step, in the order fit() runs them (make_batches seeded as _train_chunk seeds it)."""
    import numpy as np

    from helical_runner.training.batching import make_batches

    batches = make_batches(lengths, batch, np.random.default_rng([seed, 0, 0]), bucketed=True)
    return np.array([int(lengths[b].sum()) for b in batches])


def data_parallel(args, world: int) -> dict:
    """The same loop as `world` processes (one per GPU); rank 0's figures."""
    from helical_runner.training.distributed import launch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        argv = [a for a in (sys.argv[1:] if args.argv is None else args.argv)]
        argv = _without(argv, "--json", "--processes", "--precisions") + [
            "--precisions", args.dp_precision, "--processes", str(world), "--rank-result", str(out)]
        code = launch(argv, world, module="bench.gpu")
        if code != 0:
            raise RuntimeError(f"data-parallel run failed with exit code {code}")
        return json.loads(out.read_text())


def _without(argv: list[str], *flags: str) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not any(arg.startswith(f + "=") for f in flags):
            kept.append(arg)
    return kept


def rank_main(args) -> int:
    import torch

    from helical_runner.training.distributed import DistContext

    dist = DistContext.from_env()
    device = torch.device("cuda", dist.local_rank) if args.device != "cpu" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init(device)
    try:
        result = train(args, args.precisions.split(",")[0], device, dist)
        # as finetune does: no rank tears gloo down while another may still be talking to it (without this
        # barrier a rank was once killed by SIGABRT, "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.shutdown()
    if dist.is_main:
        Path(args.rank_result).write_text(json.dumps(result))
    return 0


def table(results: dict) -> str:
    runs, reference = results["precisions"], results["precisions"][0]
    lines = ["| Run | Step time | Tokens/s | Peak CUDA memory | Final loss | Max loss gap to "
             f"{reference['precision']} | Step time vs {reference['precision']} | Memory vs {reference['precision']} |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        gap = max(abs(a - b) for a, b in zip(run["losses"], reference["losses"]))
        memory = run.get("peak_allocated_bytes")
        ratio_memory = f"{memory / reference['peak_allocated_bytes']:.2f}" if memory else ""
        lines.append(f"| {run['precision']}, 1 process | {run['step_seconds'] * 1000:.1f} ms | "
                     f"{run['tokens_per_second']:,.0f} | {f'{memory / 2**30:.2f} GiB' if memory else 'n/a'} | "
                     f"{run['final_loss']:.4f} | {gap:.4f} | {run['step_seconds'] / reference['step_seconds']:.2f} | "
                     f"{ratio_memory} |")
    dp = results.get("data_parallel")
    if dp and "skipped" not in dp:
        single = next((r for r in runs if r["precision"] == dp["precision"]), None)
        scaling = f"{dp['tokens_per_second'] / (dp['processes'] * single['tokens_per_second']):.2f} of linear" \
            if single else ""
        memory = dp.get("peak_allocated_bytes")
        lines.append(f"| {dp['precision']}, {dp['processes']} processes (DDP), global batch {dp['global_batch']} | "
                     f"{dp['step_seconds'] * 1000:.1f} ms | {dp['tokens_per_second']:,.0f} ({scaling}) | "
                     f"{f'{memory / 2**30:.2f} GiB' if memory else 'n/a'} (rank 0) | {dp['final_loss']:.4f} | | | |")
    elif dp:
        lines.append(f"| data parallel | {dp['skipped']} | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("helical_runner.training.loop").setLevel(logging.ERROR)  # "no validation cells" is by design
    if args.rank_result:
        return rank_main(args)
    import torch

    if args.device == "auto" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (run `make bench-gpu` on a GPU host; "
              f"`bash scripts/bench-gpu.sh {CPU_EXAMPLE}` runs the same code on a CPU in seconds)")
        if args.json:
            Path(args.json).write_text(json.dumps({"skipped": "no CUDA device"}))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"python -m bench.gpu: error: --device cuda, but torch {torch.__version__} sees no CUDA device "
              "(is the NVIDIA driver there? `nvidia-smi` says)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.device == "cpu" else "cuda")
    names = args.precisions.split(",")
    started = time.monotonic()
    results = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "shape": {k: getattr(args, k) for k in SHAPE},
        "batch_size": args.batch_size, "median_tokens": args.tokens, "steps": args.steps, "warmup": args.warmup,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "precisions": [],
    }
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {args.warmup} + {args.steps} steps", file=sys.stderr, flush=True)
        results["precisions"].append(train(args, name, device))
    world = args.processes or (torch.cuda.device_count() if device.type == "cuda" else 1)
    if world > 1:
        print(f"[{time.strftime('%H:%M:%S')}] data parallel: {world} processes", file=sys.stderr, flush=True)
        results["data_parallel"] = data_parallel(args, world)
    else:
        results["data_parallel"] = {"skipped": "one process: a single device visible (--processes N to force)"}
    results["seconds"] = time.monotonic() - started
    text = table(results)
    print(f"{results['device']}, torch {results['torch']}, {args.layers} layers x {args.hidden} hidden, batch "
          f"{args.batch_size}, ~{results['precisions'][0]['mean_tokens']:.0f} tokens a cell, {args.steps} steps "
          f"after {args.warmup} warm-up, {results['seconds']:.0f} s\n\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
