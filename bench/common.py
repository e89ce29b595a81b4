"""What every benchmark shares: child processes with their peak RSS, medians, rows of the table.

This module imports only the standard library on purpose. A child started with vfork/exec (what
subprocess does) starts from the parent's address space, and Linux folds the parent's high-water RSS
into the child's ru_maxrss at exec: a parent that had imported torch would inflate every figure.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MODEL = "gf-12L-38M-i4096"  # the cache slot the random models are written to (v3 layout, <cls>/<eos>)
STAND_IN = "real-genes-20-markers"  # bump when helical_runner/data/synthetic.py writes different models or cells


def data_dir() -> Path:
    """Synthetic inputs live outside the clone and survive reruns (the 200k-cell file is ~3 GB)."""
    root = os.environ.get("HELICAL_BENCH_DATA") or Path(
        os.environ.get("HELICAL_AIRFLOW_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "helical-airflow") / "bench-data"
    # Keyed by the stand-in's generation: models and cells written by an older synthetic.py (made-up genes,
    # fewer markers) under the same names would otherwise be reused silently.
    path = Path(root) / STAND_IN
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _count_lines(path: Path, text: str) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if text in line)
    except OSError:
        return 0


@dataclass
class ChildResult:
    returncode: int
    seconds: float  # wall time of the whole child
    peak_rss_bytes: int  # ru_maxrss of the child (and of any children it waited for)
    output: dict | None  # the JSON object on the child's last stdout line, if any
    stdout_path: Path
    stderr_path: Path
    peak_dir_bytes: int = 0  # with run(watch=...): the most disk that folder held at any poll


    def check(self) -> "ChildResult":
        if self.returncode != 0:
            tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-15:]
            # the first line is the table's "crashed" cell: the child's own last line says why
            raise RuntimeError(f"child exited {self.returncode}: {tail[-1] if tail else 'no output'} "
                               f"(log {self.stderr_path})\n" + "\n".join(tail))
        return self


@dataclass
class Context:
    """One benchmark run: sizes, the results folder, the environment every child gets."""

    size: str
    params: dict
    results: Path
    reps: int
    env: dict = field(default_factory=dict)
    _log_counter: int = 0

    def child_env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PUSHGATEWAY_URL",)}
        env.update({
            # 2 threads on both sides (the reference point); torch reads these at import
            "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
            "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO),
            "HELICAL_SCRATCH": str(self.results / "scratch"),
        })
        env.update(self.env)
        env.update(extra)
        return env

    def run(self, name: str, argv: list[str], timeout: float = 3600, stop_after: tuple[str, int] | None = None,
            watch: Path | None = None, **env: str) -> ChildResult:
        """Run argv in a child, wait for it with wait4 and return its peak RSS and JSON output.

        stop_after=(text, n): send SIGTERM once n lines of the child's stderr contain text (e.g. after a
        few chunks of a long fine-tune); the returned peak RSS is the peak up to then.
        watch: a folder whose disk use (allocated blocks) is sampled every poll (50 ms); its peak is returned.
        """
        self._log_counter += 1
        logs = self.results / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out_path = logs / f"{self._log_counter:03d}-{name}.out"
        err_path = logs / f"{self._log_counter:03d}-{name}.err"
        started = time.monotonic()
        peak_dir = 0
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=self.child_env(**env), cwd=REPO)
            killed = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if not killed and time.monotonic() - started > timeout:
                    proc.kill()  # only our own child
                    killed = True
                if stop_after and not killed and _count_lines(err_path, stop_after[0]) >= stop_after[1]:
                    proc.terminate()  # only our own child
                    killed = True
                if watch is not None:
                    peak_dir = max(peak_dir, disk_use(watch))
                time.sleep(0.05 if not stop_after else 0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        seconds = time.monotonic() - started
        output = None
        lines = out_path.read_text(errors="replace").strip().splitlines()
        if lines:
            try:
                output = json.loads(lines[-1])
            except json.JSONDecodeError:
                output = None
        result = ChildResult(proc.returncode, seconds, usage.ru_maxrss * 1024, output, out_path, err_path, peak_dir)
        if stop_after and killed and proc.returncode == -15:
            result.returncode = 0  # stopped on purpose
        return result

    def child(self, name: str, *args: str, timeout: float = 3600, **env: str) -> ChildResult:
        return self.run(name, [PYTHON, "-m", "bench.child", *args], timeout=timeout, **env)

    def runner(self, name: str, *args: str, timeout: float = 3600, stop_after: tuple[str, int] | None = None,
               watch: Path | None = None, **env: str) -> ChildResult:
        """The real CLI, as the container runs it."""
        return self.run(name, [PYTHON, "-m", "helical_runner", *args], timeout=timeout, stop_after=stop_after,
                        watch=watch, **env)


@dataclass
class Row:
    """One line of the table: ours beside a baseline, and their ratio against a bar."""

    benchmark: str
    measure: str
    ours: str
    baseline: str
    ratio: float | None = None
    bar: str = ""
    passed: bool | None = None
    note: str = ""

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        verdict = {True: "yes", False: "**no**", None: ""}[self.passed]
        return [self.benchmark, self.measure, self.ours, self.baseline, ratio, self.bar, verdict]


def disk_use(folder: Path) -> int:
    """Bytes of disk the files under a folder take (allocated blocks), 0 if it is gone."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass  # removed between listing and stat
    return total


def median(values: list[float]) -> float:
    return statistics.median(values)


def number(value: float) -> str:
    """3 significant digits, thousands written out (4,250 rather than 4.25e+03)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    """'median (min-max, n=N)' for a row's cell."""
    if len(values) == 1:
        return number(values[0])
    return f"{number(median(values))} ({number(min(values))}-{number(max(values))}, n={len(values)})"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def markdown_table(rows: list[Row]) -> str:
    header = ["Benchmark", "Measure", "Ours", "Baseline", "Ratio", "Bar", "Meets bar"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |")
    notes = [f"- {row.benchmark}, {row.measure}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + ([""] + notes if notes else []))
