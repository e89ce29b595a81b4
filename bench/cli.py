"""`python -m bench [--size small|full] [--only NAME,...]`: run the benchmarks, print one markdown table.

Writes bench/results/<timestamp>-<size>/ (child logs, reports, results.json, table.md) and copies the
table to bench/results/latest.md. Exit code 0 when every benchmark ran (bars missed are in the table,
not in the exit code); 1 when a benchmark crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.benchmarks import BENCHMARKS, SIZES
from bench.common import REPO, Context, Row, log, markdown_table


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "memory_gib": round(memory / 2**30, 1), "cpu": cpu,
            "platform": platform.platform(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full: the issues' memory sizes (50k and 200k cells), 96 training cells; "
                             "small: a quick check of the scripts")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--reps", type=int, help="repetitions of each timed side, interleaved A,B,A,B "
                                                 "(default: the size's: 2 for training, 3 for streaming)")
    parser.add_argument("--train-cells", type=int, help="cells for the throughput benchmark (the issue's "
                                                        "reference point is 1600; default: the size's)")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"), help="results folder")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    params = dict(SIZES[args.size])
    if args.train_cells:
        params["train_cells"] = args.train_cells
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(args.results)
    results = root / f"{stamp}-{args.size}"
    results.mkdir(parents=True, exist_ok=True)
    if args.reps:
        params["reps"] = params["stream_reps"] = args.reps
    ctx = Context(size=args.size, params=params, results=results, reps=params["reps"])
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    log(f"benchmarks {', '.join(names)} at size '{args.size}' ({ctx.reps} rep(s)); results in {results}")

    rows: list[Row] = []
    timings: dict[str, float] = {}
    failed = []
    started = time.monotonic()
    for name in names:
        t0 = time.monotonic()
        try:
            rows.extend(BENCHMARKS[name](ctx))
        except Exception as exc:  # noqa: BLE001 - one crashed benchmark still leaves the others' rows
            failed.append(name)
            traceback.print_exc()
            rows.append(Row(name, "crashed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}", "", None,
                            "", False))
        timings[name] = time.monotonic() - t0
        log(f"{name} took {timings[name]:.0f} s")
    total = time.monotonic() - started

    table = markdown_table(rows)
    info = machine()
    summary = (f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB; size '{args.size}', "
               f"{ctx.reps} rep(s) per timed side; {total / 60:.1f} min "
               f"({', '.join(f'{k} {v / 60:.1f}' for k, v in timings.items())}).")
    if args.size != "full":
        summary += (f" Size '{args.size}' checks that the benchmarks run; the bars are set for 'full' (on a few "
                    "cells fixed costs such as imports and model loading dominate, e.g. prediction's).")
    text = f"{table}\n\n{summary}\n"
    (results / "table.md").write_text(text)
    (results / "results.json").write_text(json.dumps(
        {"command": command, "size": args.size, "reps": ctx.reps, "params": params, "machine": info,
         "seconds": {"total": total, **timings}, "failed": failed, "rows": [asdict(r) for r in rows]}, indent=1))
    shutil.copyfile(results / "table.md", root / "latest.md")
    shutil.rmtree(results / "scratch", ignore_errors=True)
    print(text)
    return 1 if failed else 0
