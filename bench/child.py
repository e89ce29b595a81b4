"""The measured sides of the benchmarks, one subcommand each, run in a child process by bench.cli.

Each child prints one JSON line on stdout (its last line) with what it measured; the parent adds the
child's peak RSS from wait4. Heavy imports (torch, helical, anndata) happen only here, never in the
parent, so the parent stays small (its size leaks into a vfork'ed child's ru_maxrss).
helical reads $CACHE_DIR_HELICAL_PREFIX at import: the parent sets it in the child's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


# --- inputs ----------------------------------------------------------------------------------------

def cmd_model(args) -> dict:
    """A random Geneformer in helical's cache layout, with the dropout of Geneformer's real configs."""
    from helical_runner.data.synthetic import write_tiny_geneformer

    model_dir = write_tiny_geneformer(Path(args.prefix), args.model, args.layers, args.hidden, args.heads)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    # Geneformer's published configs use 0.02 for both; write_tiny_geneformer turns attention dropout
    # off to keep the tests fast, so put it back: both sides must run the real network.
    config["hidden_dropout_prob"] = args.dropout
    config["attention_probs_dropout_prob"] = args.dropout if args.attention_dropout is None else args.attention_dropout
    config_path.write_text(json.dumps(config, indent=2))
    return {"model_dir": str(model_dir), "layers": args.layers, "hidden": args.hidden,
            "intermediate": config["intermediate_size"], "hidden_dropout": config["hidden_dropout_prob"],
            "attention_dropout": config["attention_probs_dropout_prob"]}


def cmd_scgpt_model(args) -> dict:
    """A random scGPT (helical_runner.data.synthetic.write_tiny_scgpt: d_hid = width, dropout 0.2 as scGPT's
    own) where helical looks for scGPT_CP under --prefix."""
    from helical_runner.data.synthetic import write_tiny_scgpt

    folder = write_tiny_scgpt(Path(args.prefix), layers=args.layers, width=args.width, heads=args.heads)
    return {"model_dir": str(folder), "layers": args.layers, "width": args.width, "heads": args.heads}


def cmd_data(args) -> dict:
    """A synthetic raw-count .h5ad (helical_runner.data.synthetic.make_h5ad), written block by block.

    --layout csc: the same counts with X stored as CSC (converted in memory: keep --genes-per-cell modest);
    --layout raw: counts in raw/X (with raw/var), X holding log1p(counts per 10,000), as CELLxGENE files do."""
    from helical_runner.data.synthetic import make_h5ad

    out = Path(args.output)
    partial = out.with_name(out.name + ".partial")
    make_h5ad(partial, args.cells, n_genes=args.genes, n_types=args.types, genes_per_cell=args.genes_per_cell,
              seed=args.seed)
    if args.layout == "csc":
        import anndata

        adata = anndata.read_h5ad(partial)
        adata.X = adata.X.tocsc()
        adata.write_h5ad(partial)
    elif args.layout == "raw":
        _move_counts_to_raw(partial)
    os.replace(partial, out)
    return {"path": str(out), "bytes": out.stat().st_size}


def _move_counts_to_raw(path: Path, block: int = 5000) -> None:
    """Counts to raw/X and var to raw/var (h5py copies, on disk), then X rewritten as normalised values."""
    import h5py
    import numpy as np
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    with h5py.File(path, "r+") as f:
        raw = f.create_group("raw")
        raw.attrs["encoding-type"], raw.attrs["encoding-version"] = "raw", "0.1.0"
        f.copy(f["X"], raw, "X")
        f.copy(f["var"], raw, "var")
        write_elem(raw, "varm", {})
        del f["X"]
        counts = sparse_dataset(raw["X"])
        n = counts.shape[0]
        for start in range(0, n, block):
            part = counts[start:min(start + block, n)].tocsr().astype(np.float32)
            totals = np.asarray(part.sum(axis=1)).ravel()
            part = sp.diags(1e4 / np.maximum(totals, 1)) @ part
            part.data = np.log1p(part.data).astype(np.float32)
            if start == 0:
                write_elem(f, "X", sp.csr_matrix(part, dtype=np.float32))
            else:
                sparse_dataset(f["X"]).append(sp.csr_matrix(part, dtype=np.float32))


def cmd_varlen_data(args) -> dict:
    """Cells whose expressed-gene counts vary like real ones (log-normal, a few hundred to 4,000)."""
    import anndata
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from helical_runner.data.synthetic import CELL_TYPES, panel

    rng = np.random.default_rng(args.seed)
    sizes = np.clip(rng.lognormal(np.log(args.median_genes), args.sigma, size=args.cells), 100, 4000).astype(int)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    indices = np.concatenate([np.sort(rng.choice(args.genes, size=k, replace=False)) for k in sizes])
    data = (1 + rng.poisson(2, size=len(indices))).astype(np.float32)
    X = sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(args.cells, args.genes))
    types = rng.integers(0, 4, size=args.cells)
    obs = pd.DataFrame({"cell_type": pd.Categorical([CELL_TYPES[t] for t in types], categories=CELL_TYPES[:4])},
                       index=pd.Index([f"cell-{i:07d}" for i in range(args.cells)]))
    genes = panel(args.genes)  # CELLxGENE's layout: Ensembl ids as var names, symbols in feature_name
    var = pd.DataFrame({"feature_name": genes["symbol"].to_numpy()}, index=pd.Index(genes["ensembl_id"].to_numpy()))
    out = Path(args.output)
    partial = out.with_name(out.name + ".partial.h5ad")
    anndata.AnnData(X=X, obs=obs, var=var).write_h5ad(partial)
    os.replace(partial, out)
    return {"path": str(out), "bytes": out.stat().st_size}


def cmd_classifier(args) -> dict:
    """A saved classifier (predict's model folder) over the cached base model: its encoder, a seeded random
    head for the file's cell types. Throughput does not depend on what the head learnt."""
    import torch

    from helical_runner.models.geneformer import network as model_io
    from helical_runner.models.geneformer.files import locate
    from helical_runner.data.synthetic import CELL_TYPES

    files = locate(args.model, fetch_missing=False)
    torch.manual_seed(args.seed)
    labels = sorted(CELL_TYPES[: args.types])
    net = model_io.GeneformerClassifier(model_io.load_encoder(files.model_dir), len(labels), files.special_token)
    meta = model_io.ClassifierMeta(labels=labels, label_column="cell_type", base_model=files.name,
                                   model_version=files.version, input_size=files.input_size,
                                   special_token=files.special_token)
    model_io.save(net, meta, files, Path(args.output))
    return {"model": args.output, "labels": labels}


# --- measured sides --------------------------------------------------------------------------------

def cmd_read_h5ad(args) -> dict:
    """The whole-file approach: anndata.read_h5ad of the file (what helical's process_data needs)."""
    import anndata

    started = time.monotonic()
    adata = anndata.read_h5ad(args.path)
    return {"cells": int(adata.n_obs), "seconds": time.monotonic() - started}


def cmd_helical_train(args) -> dict:
    """helical's GeneformerFineTuningModel.train on a whole .h5ad; only train() is timed."""
    import anndata
    import torch
    from helical.models.geneformer import GeneformerConfig, GeneformerFineTuningModel

    torch.manual_seed(args.seed)
    adata = anndata.read_h5ad(args.path)
    adata.var["ensembl_id"] = adata.var.index.astype(str)
    codes = adata.obs[args.label_column].astype("category").cat.codes.to_numpy()
    n_classes = int(codes.max()) + 1

    load_started = time.monotonic()
    config = GeneformerConfig(model_name=args.model, batch_size=args.batch_size, device="cpu")
    config.config["embsize"] = args.hidden  # the random model's hidden size (ENVIRONMENT.md)
    model = GeneformerFineTuningModel(geneformer_config=config, fine_tuning_head="classification",
                                      output_size=n_classes)
    load_seconds = time.monotonic() - load_started

    tokenize_started = time.monotonic()
    dataset = model.process_data(adata, gene_names="ensembl_id")
    dataset = dataset.add_column("label", [int(c) for c in codes])
    tokenize_seconds = time.monotonic() - tokenize_started
    lengths = [int(x) for x in dataset["length"]]

    started = time.monotonic()
    model.train(train_dataset=dataset, label="label", epochs=1, freeze_layers=args.freeze_layers, silent=True)
    seconds = time.monotonic() - started
    return {"cells": len(dataset), "train_seconds": seconds, "cells_per_second": len(dataset) / seconds,
            "load_seconds": load_seconds, "tokenize_seconds": tokenize_seconds,
            "mean_tokens": sum(lengths) / len(lengths), "threads": torch.get_num_threads(),
            "backbone_training_mode": bool(model.model.training)}


def cmd_helical_annotate(args) -> dict:
    """helical's annotation path on a whole .h5ad: read_h5ad, process_data, get_embeddings (cell embeddings),
    then the saved model's linear head on them, predictions written as a CSV like `predict` writes."""
    import csv

    import numpy as np
    import torch
    from safetensors.torch import load_file

    started = time.monotonic()
    meta = json.loads((Path(args.classifier) / "classifier.json").read_text())
    head = load_file(Path(args.classifier) / "classifier.safetensors")
    adata, embeddings, tokenize_started, inference_started = _helical_embeddings(args)
    with torch.no_grad():
        logits = torch.from_numpy(np.asarray(embeddings, dtype=np.float32)) @ head["classifier.weight"].T \
            + head["classifier.bias"]
    probs = torch.softmax(logits, dim=1).numpy()
    inference_seconds = time.monotonic() - inference_started
    best = probs.argmax(axis=1)
    labels = np.asarray(meta["labels"])[best]
    with open(args.output, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell_id", "predicted_label", "probability"])
        for cell, label, p in zip(adata.obs_names, labels, probs[np.arange(len(best)), best]):
            writer.writerow([cell, label, f"{p:.4f}"])
    return {"cells": len(best), "seconds": time.monotonic() - started,
            "tokenize_seconds": inference_started - tokenize_started, "inference_seconds": inference_seconds,
            "threads": torch.get_num_threads()}


def _helical_embeddings(args):
    """helical's quick start on args.path: (adata, cell embeddings, tokenizing started, inference started)."""
    import anndata
    from helical.models.geneformer import Geneformer, GeneformerConfig

    adata = anndata.read_h5ad(args.path)
    adata.var["ensembl_id"] = adata.var.index.astype(str)
    config = GeneformerConfig(model_name=args.model, batch_size=args.batch_size, device="cpu", emb_mode="cell")
    config.config["embsize"] = args.hidden  # the random model's hidden size (ENVIRONMENT.md)
    model = Geneformer(configurer=config)
    tokenize_started = time.monotonic()
    dataset = model.process_data(adata, gene_names="ensembl_id")
    inference_started = time.monotonic()
    return adata, model.get_embeddings(dataset), tokenize_started, inference_started


def cmd_helical_embed(args) -> dict:
    """helical's embedding path on a whole .h5ad, as its quick start: read_h5ad, process_data,
    get_embeddings (cell mode, last layer); the embeddings written into the AnnData's obsm and saved, as a
    user keeps them (embed writes embeddings.h5ad)."""
    started = time.monotonic()
    adata, embeddings, tokenize_started, inference_started = _helical_embeddings(args)
    return _kept_embeddings(args, adata, "X_geneformer", embeddings, started, tokenize_started, inference_started)


def _kept_embeddings(args, adata, key: str, embeddings, started: float, tokenize_started: float,
                     inference_started: float) -> dict:
    """The tail of helical's embedding paths: the embeddings into obsm[key] and the AnnData saved, as a user
    keeps them (embed writes embeddings.h5ad); the child's result with each phase's seconds."""
    import numpy as np
    import torch

    inference_seconds = time.monotonic() - inference_started
    adata.obsm[key] = np.asarray(embeddings, dtype=np.float32)
    adata.write_h5ad(args.output)
    return {"cells": int(adata.n_obs), "seconds": time.monotonic() - started,
            "tokenize_seconds": inference_started - tokenize_started, "inference_seconds": inference_seconds,
            "threads": torch.get_num_threads()}


def _scgpt_config(args):
    """helical's scGPTConfig for the stand-in's shape (d_hid = width, as write_tiny_scgpt writes it), with
    helical's downloader replaced by a no-op first: scGPT's constructor asks helical's bucket for every file
    even when it is cached (and deletes a cached file when that check fails), and this machine has no network.
    tests/runner/test_embed_scgpt.py does the same; nothing else of helical's is replaced."""
    import helical.models.scgpt.model as helical_model
    from helical.models.scgpt import scGPTConfig

    class NoDownload:
        def download_via_name(self, name):
            pass

    helical_model.Downloader = NoDownload
    return scGPTConfig(batch_size=args.batch_size, nlayers=args.layers, nheads=args.heads, embsize=args.width,
                       d_hid=args.width, device="cpu")


def cmd_helical_scgpt_embed(args) -> dict:
    """helical's scGPT quick start on a whole .h5ad: read_h5ad, process_data (symbols from --gene-column),
    get_embeddings (cell mode), the embeddings written into obsm and the AnnData saved (embed writes
    embeddings.h5ad)."""
    import anndata
    from helical.models.scgpt import scGPT

    started = time.monotonic()
    adata = anndata.read_h5ad(args.path)
    model = scGPT(configurer=_scgpt_config(args))
    tokenize_started = time.monotonic()
    dataset = model.process_data(adata, gene_names=args.gene_column)
    inference_started = time.monotonic()
    embeddings = model.get_embeddings(dataset)
    return _kept_embeddings(args, adata, "X_scgpt", embeddings, started, tokenize_started, inference_started)


def cmd_helical_scgpt_train(args) -> dict:
    """helical's scGPTFineTuningModel.train (its own DataLoader, one epoch, batch --batch-size) on a whole
    .h5ad, then the fine-tuned weights saved with torch.save (finetune saves model/). train() is timed alone;
    the parent also times the whole process."""
    import anndata
    import numpy as np
    import torch
    from helical.models.scgpt import scGPTFineTuningModel

    torch.manual_seed(args.seed)
    adata = anndata.read_h5ad(args.path)
    # int64: helical slices these into torch.tensor for CrossEntropyLoss, which wants long class indices
    codes = adata.obs[args.label_column].astype("category").cat.codes.to_numpy().astype(np.int64)
    n_classes = int(codes.max()) + 1

    load_started = time.monotonic()
    model = scGPTFineTuningModel(scGPT_config=_scgpt_config(args), fine_tuning_head="classification",
                                 output_size=n_classes)
    load_seconds = time.monotonic() - load_started
    tokenize_started = time.monotonic()
    dataset = model.process_data(adata, gene_names=args.gene_column)
    tokenize_seconds = time.monotonic() - tokenize_started

    started = time.monotonic()
    model.train(train_input_data=dataset, train_labels=codes, epochs=1)
    seconds = time.monotonic() - started
    torch.save({"model": model.model.state_dict(), "head": model.fine_tuning_head.state_dict()}, args.output)
    return {"cells": len(dataset), "train_seconds": seconds, "cells_per_second": len(dataset) / seconds,
            "load_seconds": load_seconds, "tokenize_seconds": tokenize_seconds,
            "threads": torch.get_num_threads(), "encoder_training_mode": bool(model.model.training)}


def cmd_padding(args) -> dict:
    """Real tokens / computed tokens: our length-bucketed batches vs helical's file-order batches.

    Token lengths come from the runner's tokenizer (token-for-token helical's) chunk by chunk, as the
    runner reads them; ours batches each chunk's training cells with batching.make_batches exactly as
    training.fit does, helical's takes the same cells in file order and pads each batch to its longest.
    With --tokens-per-batch, ours is also measured with batches filled to that token budget instead.
    """
    import numpy as np

    from helical_runner.training.batching import is_validation, make_batches, padded_tokens
    from helical_runner.data.h5ad_io import H5adRows
    from helical_runner.models.geneformer.files import locate
    from helical_runner.models.geneformer.tokenizer import GeneformerTokenizer

    tokenizer = GeneformerTokenizer(locate(args.model, fetch_missing=False), args.max_input_size)
    ours_real = ours_padded = theirs_padded = budget_padded = budget_batches = 0
    file_order = []
    with H5adRows(Path(args.path), args.path) as rows:
        ids = rows.gene_ids
        for index, start in enumerate(range(0, rows.n_obs, args.cells_per_chunk)):
            part = rows.rows(start, min(start + args.cells_per_chunk, rows.n_obs))
            tokens = tokenizer.tokenize(part.X, ids, part.obs.index)
            train = ~is_validation(tokens.cell_ids, args.val_fraction)
            lengths = tokens.lengths[train]
            file_order.append(lengths)
            rng = np.random.default_rng([args.seed, 0, index])  # training.fit's seed for epoch 0
            batches = make_batches(lengths, args.batch_size, rng, bucketed=True)
            ours_real += int(lengths.sum())
            ours_padded += padded_tokens(lengths, batches)
            if args.tokens_per_batch:
                rng = np.random.default_rng([args.seed, 0, index])
                batches = make_batches(lengths, args.batch_size, rng, True, args.tokens_per_batch)
                budget_padded += padded_tokens(lengths, batches)
                budget_batches += len(batches)
    lengths = np.concatenate(file_order)
    for start in range(0, len(lengths), args.batch_size):
        batch = lengths[start:start + args.batch_size]
        theirs_padded += int(batch.max()) * len(batch)
    return {"cells": int(len(lengths)), "mean_tokens": float(lengths.mean()), "min_tokens": int(lengths.min()),
            "max_tokens": int(lengths.max()), "ours": ours_real / ours_padded,
            "helical": int(lengths.sum()) / theirs_padded,
            **({"ours_budget": ours_real / budget_padded, "cells_per_budget_batch": len(lengths) / budget_batches}
               if args.tokens_per_batch else {})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("model")
    p.add_argument("--prefix", required=True)
    p.add_argument("--model", default="gf-12L-38M-i4096")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.02)
    p.add_argument("--attention-dropout", type=float, help="default: --dropout")
    p = sub.add_parser("scgpt-model")
    p.add_argument("--prefix", required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p = sub.add_parser("data")
    p.add_argument("--output", required=True)
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=19_000)
    p.add_argument("--types", type=int, default=4)
    p.add_argument("--genes-per-cell", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["csr", "csc", "raw"], default="csr")
    p = sub.add_parser("varlen-data")
    p.add_argument("--output", required=True)
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=19_000)
    p.add_argument("--median-genes", type=int, default=800)
    p.add_argument("--sigma", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("read-h5ad")
    p.add_argument("--path", required=True)
    p = sub.add_parser("helical-train")
    p.add_argument("--path", required=True)
    p.add_argument("--model", default="gf-12L-38M-i4096")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--label-column", default="cell_type")
    p.add_argument("--freeze-layers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("classifier")
    p.add_argument("--output", required=True)
    p.add_argument("--model", default="gf-12L-38M-i4096")
    p.add_argument("--types", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("helical-annotate")
    p.add_argument("--path", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", default="gf-12L-38M-i4096")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=24)
    p = sub.add_parser("helical-embed")
    p.add_argument("--path", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", default="gf-12L-38M-i4096")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=24)
    for name, batch in (("helical-scgpt-embed", 24), ("helical-scgpt-train", 12)):
        p = sub.add_parser(name)
        p.add_argument("--path", required=True)
        p.add_argument("--output", required=True)
        p.add_argument("--layers", type=int, default=12)
        p.add_argument("--width", type=int, default=512)
        p.add_argument("--heads", type=int, default=8)
        p.add_argument("--batch-size", type=int, default=batch)
        p.add_argument("--gene-column", default="feature_name")
        p.add_argument("--label-column", default="cell_type")
        p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("padding")
    p.add_argument("--path", required=True)
    p.add_argument("--model", default="gf-12L-38M-i4096")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--cells-per-chunk", type=int, default=2000)
    p.add_argument("--max-input-size", type=int, default=4096)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--tokens-per-batch", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    handler = {"model": cmd_model, "data": cmd_data, "varlen-data": cmd_varlen_data, "read-h5ad": cmd_read_h5ad,
               "helical-train": cmd_helical_train, "padding": cmd_padding, "classifier": cmd_classifier,
               "helical-annotate": cmd_helical_annotate, "helical-embed": cmd_helical_embed,
               "scgpt-model": cmd_scgpt_model, "helical-scgpt-embed": cmd_helical_scgpt_embed,
               "helical-scgpt-train": cmd_helical_scgpt_train}[args.cmd]
    emit(handler(args))


if __name__ == "__main__":
    sys.exit(main())
