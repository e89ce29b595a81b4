"""`helical-runner info | inspect | chunk | finetune | predict | embed`: the runner image's entrypoint.

Every failure ends with exactly one line on stderr, `helical-runner: error: <what went wrong>`, and a
sysexits code (65 bad input: don't retry; 69 a service was unreachable: retry may help; 74 a disk too small
for the step, e.g. scratch for a CSC matrix: free space or use a larger disk; 70 a bug). On
failure an `error.json` is written under the output prefix and nothing else is left there.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import traceback

from helical_runner import __version__
from helical_runner.errors import InputError, RunnerError, disk_full

log = logging.getLogger("helical_runner")


def _common_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="resource profile from config/profiles.yaml (default: the file's default)")
    parser.add_argument("--run-id", help="id for metrics and reports (default: $HELICAL_RUN_ID or the output's name)")
    parser.add_argument("--device", help="override the profile's device: cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="override the profile's precision")
    parser.add_argument("--batch-size", type=int, help="cells per step (overrides the profile)")
    parser.add_argument("--cells-per-chunk", type=int, help="rows per streamed chunk (overrides the profile)")
    parser.add_argument("--max-input-size", type=int, help="tokens kept per cell (overrides the profile)")


def _input_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", metavar="X|raw|layers/NAME",
                        help="where the raw counts are (default: the first of X, raw/X, layers/counts, "
                             "layers/raw_counts, other layers that holds non-negative integers)")
    parser.add_argument("--gene-column", metavar="NAME",
                        help="var column with the gene ids or symbols, or 'index' (default: the var names or the "
                             "first of ensembl_id, gene_ids, gene_id, feature_id, ensembl, _index holding Ensembl ids)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helical-runner",
        description="Stream .h5ad chunks from S3/MinIO or local paths and fine-tune or apply Geneformer. "
                    "URLs are s3://bucket/key (endpoint from S3_ENDPOINT_URL, credentials from AWS_*) or paths.")
    parser.add_argument("--version", action="version", version=f"helical-runner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,inspect,chunk,finetune,predict,embed}")

    info = sub.add_parser("info", help="every model, or one model's metadata, as JSON (offline, from helical's cache)")
    info.add_argument("--model", help="helical model name (default: list every model and its cache state)")
    info.add_argument("--profile", help="resource profile for the device shown")

    inspect = sub.add_parser("inspect", help="what the runner will use in an .h5ad: counts, gene ids, labels, problems")
    inspect.add_argument("--data", required=True, help=".h5ad URL")
    inspect.add_argument("--label-column", help="obs column the run will train on (checked for 2+ classes)")
    inspect.add_argument("--model", default="gf-12L-38M-i4096", help="model whose vocabulary is counted")
    inspect.add_argument("--output", help="also write inspect.json (or error.json) under this prefix")
    inspect.add_argument("--unlabelled-ok", action="store_true",
                         help="a --label-column that is missing (or has under 2 classes) is no problem: "
                              "inspect.json then says labelled: false")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of lines")
    inspect.add_argument("--run-id", help="id for the scratch folder (default: $HELICAL_RUN_ID)")
    _input_flags(inspect)

    chunk = sub.add_parser("chunk", help="split an .h5ad into row chunks plus a manifest, without loading it whole")
    chunk.add_argument("--input", required=True, help=".h5ad URL")
    chunk.add_argument("--output", required=True, help="prefix for chunk-NNNNN.h5ad and manifest.json")
    chunk.add_argument("--cells-per-chunk", type=int, help="rows per chunk (default: the profile's)")
    chunk.add_argument("--profile", help="resource profile (chunk size and input size cap)")
    chunk.add_argument("--run-id", help="id for metrics (default: $HELICAL_RUN_ID or the output's name)")
    _input_flags(chunk)

    finetune = sub.add_parser("finetune", help="fine-tune a Geneformer cell-type classifier on streamed chunks")
    finetune.add_argument("--data", required=True, help="chunk manifest.json or .h5ad URL")
    finetune.add_argument("--label-column", required=True, help="obs column with the cell labels")
    finetune.add_argument("--output", required=True, help="prefix for model/, checkpoint, report and pictures")
    finetune.add_argument("--model", default="gf-12L-38M-i4096",
                          help="model to start from (any `helical-runner info` lists as fine-tuning: Geneformer, scGPT)")
    finetune.add_argument("--epochs", type=int, help="passes over the data (default 1)")
    finetune.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    finetune.add_argument("--freeze-layers", type=int, help="first N encoder layers kept fixed (default 0)")
    finetune.add_argument("--tokens-per-batch", type=int,
                          help="fill each batch with similar-length cells up to this many padded tokens, instead "
                               "of a fixed number of cells (--batch-size); e.g. 16384")
    finetune.add_argument("--val-fraction", type=float, help="share of cells held out for validation (default 0.1)")
    finetune.add_argument("--seed", type=int, help="random seed (default 0)")
    finetune.add_argument("--attention-dropout", type=float,
                          help="dropout on attention probabilities (default 0: keeps SDPA on its fused kernels; "
                               "-1 keeps the model's own rate)")
    finetune.add_argument("--hidden-dropout", type=float,
                          help="dropout on the encoder's hidden states (default 0, as helical's train(), which runs "
                               "the encoder in eval mode; -1 keeps the model's own rate, Geneformer's 0.02)")
    finetune.add_argument("--head-dropout", type=float,
                          help="dropout before the classification head (default: the model's own, Geneformer's "
                               "0.02; scGPT: 0.02, helical's ClassificationHead default)")
    finetune.add_argument("--no-length-bucketing", action="store_true", help="batch cells in random order only")
    finetune.add_argument("--no-early-prefetch", action="store_true",
                          help="read the first chunk only once the model has loaded (by default the two overlap)")
    finetune.add_argument("--register", metavar="NAME",
                          help="registered model (MLflow) the fine-tuned model becomes a version of, when "
                               "MLFLOW_TRACKING_URI is set (default helical-<label column>)")
    finetune.add_argument("--promote", choices=["auto", "always", "never"], default="auto",
                          help="move the registered model's alias 'champion' to the new version: auto when there is "
                               "no champion or the new macro-F1 beats the champion's (default), always, or never")
    finetune.add_argument("--nproc", type=int, help="data-parallel processes (default: the profile's gpus when > 1; "
                                                    "on CPU, gloo processes)")
    _common_run_flags(finetune)
    _input_flags(finetune)

    predict = sub.add_parser("predict", help="annotate cells with a fine-tuned model")
    predict.add_argument("--model", required=True,
                         help="model folder written by finetune (<output>/model), or a registered model: "
                              "models:/NAME@ALIAS or models:/NAME/VERSION (MLflow's registry, MLFLOW_TRACKING_URI)")
    predict.add_argument("--data", required=True, help="chunk manifest.json or .h5ad URL")
    predict.add_argument("--output", required=True,
                         help="prefix for predictions.csv, predictions.h5ad, umap.png, report.json and report.html")
    predict.add_argument("--no-embeddings", action="store_true",
                         help="leave the cell embeddings (obsm['X_geneformer']) and the UMAP out")
    predict.add_argument("--embeddings", metavar="URL",
                         help="an embed step's embeddings.h5ad of the same data: its Leiden clusters and UMAP are "
                              "added to predictions.h5ad")
    _common_run_flags(predict)
    _input_flags(predict)

    embed = sub.add_parser("embed", help="cell embeddings, Leiden clusters and a UMAP from a pretrained model "
                                         "(no labels needed)")
    embed.add_argument("--model", default="gf-12L-38M-i4096",
                       help="helical model name (`helical-runner info` lists them)")
    embed.add_argument("--data", required=True, help="chunk manifest.json or .h5ad URL")
    embed.add_argument("--output", required=True,
                       help="prefix for embeddings.h5ad, umap.png, report.json and report.html")
    embed.add_argument("--color", nargs="+", action="extend", default=[], metavar="COLUMN",
                       help="obs column(s) to colour umap.png by, beside the clusters")
    embed.add_argument("--max-cluster-cells", type=int, default=50_000, metavar="N",
                       help="cells clustered and laid out together; the rest are placed by nearest neighbours")
    _common_run_flags(embed)
    _input_flags(embed)
    return parser


def _profile(args):
    from helical_runner import profiles

    profile = profiles.load(getattr(args, "profile", None))
    family = _model_family(getattr(args, "model", None), profile.families)
    if family:  # the profile's settings for this model family (config/profiles.yaml `families:`), then flags
        profile = profile.for_family(family)
    return profile.override(device=getattr(args, "device", None), precision=getattr(args, "precision", None),
                            batch_size=getattr(args, "batch_size", None),
                            cells_per_chunk=getattr(args, "cells_per_chunk", None),
                            max_input_size=getattr(args, "max_input_size", None))


def _model_family(model: str | None, families: dict) -> str | None:
    """Which family of the profile's `families:` section runs helical model `model`; None for no model, a
    fine-tuned folder or registry URL (predict), or a family the section doesn't name. Only the named
    families are asked: Geneformer's names come from helical's config, a 6-second import at every start."""
    from helical_runner import models

    for family in families if model else ():
        try:
            if model in models.family_named(family).names():
                return family
        except InputError:
            continue  # a family this runner doesn't know: nothing of it applies
    return None


def run_info(args) -> dict:
    from helical_runner.commands.info import catalogue_info, model_info

    return model_info(args.model, _profile(args)) if args.model else catalogue_info(_profile(args))


def run_command(args, profile, scratch, metrics, tracking=None) -> dict:
    metrics.update(memory_limit_bytes=profile.memory_limit_bytes)
    if args.command == "chunk":
        from helical_runner.data.chunking import chunk

        return chunk(args.input, args.output, profile.cells_per_chunk, scratch.path, profile.max_input_bytes,
                     progress=metrics.update, counts=args.counts, gene_column=args.gene_column,
                     max_cells=profile.max_cells)
    if args.command == "finetune":
        from helical_runner.commands.finetune import finetune
        from dataclasses import replace

        from helical_runner.training.loop import TrainConfig, merge_config

        if args.nproc is not None and args.nproc < 1:
            raise InputError(f"--nproc must be at least 1, got {args.nproc}")

        config = merge_config(TrainConfig(), epochs=args.epochs, batch_size=profile.batch_size, lr=args.lr,
                              freeze_layers=args.freeze_layers, val_fraction=args.val_fraction, seed=args.seed,
                              tokens_per_batch=args.tokens_per_batch, head_dropout=args.head_dropout,
                              length_bucketing=False if args.no_length_bucketing else None)
        # -1 asks for the model's own rate: None in TrainConfig, set here because merge_config skips Nones
        for name in ("attention_dropout", "hidden_dropout"):
            rate = getattr(args, name)
            if rate is not None:
                config = merge_config(replace(config, **{name: None if rate < 0 else rate}))  # checks the rate
        return finetune(args.data, args.label_column, args.output, args.model, profile, config,
                        metrics.run_id, scratch.path, metrics, args.counts, args.gene_column,
                        early_prefetch=not args.no_early_prefetch, tracking=tracking,
                        register=args.register, promote=args.promote)
    if args.command == "embed":
        from helical_runner.commands.embed import embed

        if args.max_cluster_cells < 10:
            raise InputError(f"--max-cluster-cells must be at least 10, got {args.max_cluster_cells}")
        return embed(args.model, args.data, args.output, profile, metrics.run_id, scratch.path, metrics,
                     args.counts, args.gene_column, args.color, args.max_cluster_cells, tracking=tracking)
    from helical_runner.commands.predict import predict

    return predict(args.model, args.data, args.output, profile, metrics.run_id, scratch.path, metrics,
                   args.counts, args.gene_column, embeddings=not args.no_embeddings,
                   embeddings_url=args.embeddings, tracking=tracking)


def _summary(command: str, result: dict) -> str:
    if command == "chunk":
        return f"{result['n_cells']} cells in {len(result['chunks'])} chunks"
    if command == "finetune":
        accuracy = result.get("accuracy")
        return f"{result['steps']} steps, validation accuracy {accuracy:.3f}" if accuracy is not None else \
            f"{result['steps']} steps"
    if command == "embed":
        clustered = result.get("clusters")
        return f"{result['cells']['embedded']} cells embedded" + \
            (f", {clustered['clusters']} Leiden clusters" if clustered else "")
    return f"{result['cells']['predicted']} cells annotated"


def _exit_on_sigterm() -> None:
    """End at once on SIGTERM, as a process ends by default. In a container this process is PID 1, which the
    kernel shields from every signal it has no handler for: `docker stop` (an operator, a host shutdown, or
    a retry stopping the attempt a lost worker left behind) then waited out its whole grace period while the
    step went on training and writing checkpoints, and ended in SIGKILL anyway. Nothing is lost that SIGKILL
    would keep: a retry resumes from the last checkpoint either way. Exit code 143 (128 + SIGTERM)."""
    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        sys.stderr.write("helical-runner: stopped by SIGTERM; a retry resumes from the last checkpoint\n")
        sys.stderr.flush()
        os._exit(128 + signum)  # no clean-up: a stop must not wait on S3 or the training step

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    _exit_on_sigterm()
    if args.command == "info":
        try:
            print(json.dumps(run_info(args), indent=1))
            return 0
        except RunnerError as exc:
            return _fail(exc)
    if args.command == "inspect":
        return run_inspect(args)
    from helical_runner.training.distributed import in_rank, launch

    if not in_rank():
        try:
            world = _data_parallel_world(args)
        except InputError:
            world = 1  # _run reports the bad flag or profile, with its error.json
        if world > 1:
            log.info("starting %d data-parallel processes", world)
            return launch(sys.argv[1:] if argv is None else argv, world)
    return _run(args)


def run_inspect(args) -> int:
    """Print what the runner will use (exit 0), or the facts and then the problem's one line (exit 65)."""
    from helical_runner.commands import inspect as inspection
    from helical_runner.data import storage
    from helical_runner.outputs.report import ERROR_NAME, write_json
    from helical_runner.runs import Scratch

    output = storage.parse(args.output) if args.output else None
    scratch = Scratch.create(args.run_id or os.environ.get("HELICAL_RUN_ID") or "inspect")
    try:
        facts = inspection.inspect(args.data, scratch.path, args.model, args.label_column, args.counts,
                                   args.gene_column, unlabelled_ok=args.unlabelled_ok)
        print(json.dumps(facts, indent=1) if args.json else inspection.text(facts), flush=True)
        if output is not None:
            write_json(output, "inspect.json", facts)
        inspection.check(facts)
    except RunnerError as exc:
        if output is not None:
            return _record_failure(output, "inspect", args.run_id or "", exc)
        return _fail(exc)
    finally:
        scratch.cleanup()
    if output is not None:
        try:  # a stale error report from an earlier attempt would contradict this success
            storage.delete(output.join(ERROR_NAME))
        except RunnerError:
            pass
    return 0


def _configure_logging(verbose: bool) -> None:
    # helical attaches its own root handler on import; ours gets a private one so lines print once.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")


def _data_parallel_world(args) -> int:
    if args.command != "finetune":
        return 1
    if args.nproc is not None:
        return args.nproc
    return max(1, _profile(args).gpus)


def _run(args) -> int:
    from helical_runner.data import storage
    from helical_runner.outputs.metrics import RunMetrics
    from helical_runner.outputs.report import ERROR_NAME
    from helical_runner.runs import Scratch, run_id_for

    try:
        output = storage.parse(args.output)
    except InputError as exc:
        return _fail(exc)
    run_id = run_id_for(output, args.run_id)
    try:
        profile = _profile(args)
    except InputError as exc:
        return _record_failure(output, args.command, run_id, exc)
    info = {"profile": profile.name, "precision": profile.precision, "device": profile.device,
            "model": getattr(args, "model", "") or "", "dag_id": os.environ.get("HELICAL_DAG_ID", ""),
            "task_id": os.environ.get("HELICAL_TASK_ID", "")}
    from helical_runner.training.distributed import DistContext

    main_rank = DistContext.from_env().is_main
    if not main_rank:
        log.setLevel(logging.WARNING)  # rank 0 tells the story
    metrics = RunMetrics(args.command, run_id, info, gateway=None if main_rank else "").start()
    scratch = Scratch.create(run_id)
    tracking = None
    try:
        tracking = _tracking(args, profile, output, run_id, scratch.path, metrics) if main_rank else None
        result = run_command(args, profile, scratch, metrics, tracking)
        if tracking is not None:
            tracking.finish("FINISHED")
    except BaseException as exc:  # noqa: BLE001 - every failure gets its one line and an error report
        metrics.finish("failed")
        from helical_runner.errors import SupersededError

        if tracking is not None and not isinstance(exc, SupersededError):  # a newer attempt owns the run now
            tracking.finish("FAILED")
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            exc = disk_full(exc, scratch.path.parent)
        if not isinstance(exc, (RunnerError, KeyboardInterrupt)):
            traceback.print_exc()  # a bug: the trace goes to the log, the one-line summary still comes last
        failure = RunnerError("interrupted") if isinstance(exc, KeyboardInterrupt) else exc
        return _record_failure(output, args.command, run_id, failure) if main_rank else _fail(failure)
    finally:
        scratch.cleanup()
    metrics.finish("succeeded")
    if not main_rank:
        return 0
    try:  # a stale error report from an earlier failed attempt would contradict this success
        storage.delete(output.join(ERROR_NAME))
    except RunnerError:
        pass
    print(f"{args.command} done: {_summary(args.command, result)}; outputs under {output}", file=sys.stderr)
    return 0


TRACKED = ("finetune", "predict", "embed")  # the steps that train or annotate: one MLflow run each


def _tracking(args, profile, output, run_id: str, scratch, metrics):
    """The step's MLflow tracking (helical_runner.tracking), started with its parameters and telling the
    pushed metrics its run; None for steps that aren't tracked."""
    from dataclasses import asdict

    from helical_runner import tracking

    if args.command not in TRACKED:
        return None
    if getattr(args, "register", None):
        from helical_runner.tracking.registry import check_name

        check_name(args.register)
    found = tracking.from_env(args.command, str(output), run_id, scratch)
    found.on_open = lambda t: metrics.name_mlflow_run(t.run_id, t.experiment_id or "", t.url or "")
    metrics.listeners.append(found.progress)  # the loop's step, loss, learning rate, validation figures
    skip = {"verbose", "command", "output", "run_id", "profile"}
    params = {k: (" ".join(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k not in skip}
    params.update({f"profile.{k}": v for k, v in asdict(profile).items()})
    return found.start(params)


def _record_failure(output, command: str, run_id: str, exc: BaseException) -> int:
    """error.json under the output prefix (best effort: S3 may be what failed), then the one line. A
    superseded attempt writes nothing: the outputs are the newer attempt's."""
    from helical_runner.errors import SupersededError
    from helical_runner.outputs.report import ERROR_NAME, write_json

    if isinstance(exc, SupersededError):
        return _fail(exc)
    try:
        write_json(output, ERROR_NAME, {"status": "failed", "command": command, "run_id": run_id,
                                        "error": _message(exc), "exit_code": _code(exc)})
    except Exception:  # noqa: BLE001
        pass
    return _fail(exc)


def _code(exc: BaseException) -> int:
    return exc.exit_code if isinstance(exc, RunnerError) else 70


def _message(exc: BaseException) -> str:
    message = str(exc) if isinstance(exc, RunnerError) else f"internal error: {type(exc).__name__}: {exc}"
    return (message.splitlines() or [type(exc).__name__])[0]


def _fail(exc: BaseException) -> int:
    print(f"helical-runner: error: {_message(exc)}", file=sys.stderr)
    return _code(exc)


if __name__ == "__main__":
    sys.exit(main())
