"""`make bench-gpu`'s entry point (bench/gpu.py) on a CPU: it must run, unchanged, on a bare GPU host whose
Python has torch and transformers but not helical, anndata, scanpy or boto3.

On this machine there is no CUDA device, so the default run can only say so; `--device cpu` with a small
shape runs the same loop, precisions and data-parallel launch (gloo instead of NCCL) end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--device", "cpu", "--layers", "2", "--hidden", "64", "--heads", "4", "--intermediate", "128",
         "--tokens", "48", "--positions", "128", "--batch-size", "4", "--warmup", "1", "--steps", "4"]
# What the GPU host lacks, made absent in every process (a sitecustomize, so data-parallel ranks too). A None
# in sys.modules is Python's own "not installed": `import` raises ModuleNotFoundError and
# importlib.util.find_spec returns None, as transformers' optional-package probes expect. (A meta_path finder
# that raises would also break those probes, which a missing package never does.)
BLOCKER = textwrap.dedent("""
    import sys
    for name in ("helical", "anndata", "scanpy", "boto3", "botocore", "moto", "s3fs"):
        sys.modules[name] = None
""")


def run_bench(*args: str, tmp_path: Path, blocked: bool = False) -> subprocess.CompletedProcess:
    path = [str(REPO)]
    if blocked:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCKER)
        path.insert(0, str(site))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench.gpu", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this host has a CUDA device")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    result = run_bench("--json", str(tmp_path / "out.json"), tmp_path=tmp_path, blocked=True)
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stdout
    assert json.loads((tmp_path / "out.json").read_text()) == {"skipped": "no CUDA device"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this host has a CUDA device")
@pytest.mark.parametrize("args, says", [
    (["--device", "cuda"], "--device cuda, but torch"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--precisions", "fp32,fp8"], "unknown precision(s) fp8"),
])
def test_a_wrong_option_is_one_line_not_a_traceback(tmp_path, args, says):
    result = run_bench(*args, tmp_path=tmp_path, blocked=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("python -m bench.gpu: error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_blocker_refuses_what_the_gpu_host_lacks(tmp_path):
    """The check below means something only if the blocked packages really fail to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    code = ("import importlib, importlib.util\nfor m in ('anndata', 'boto3', 'helical'):\n"
            "    assert importlib.util.find_spec(m) is None\n    try:\n        importlib.import_module(m)\n"
            "    except ImportError:\n        print('refused', m)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.stdout.split("\n")[:3] == ["refused anndata", "refused boto3", "refused helical"], result.stderr


@pytest.mark.slow
def test_cpu_run_of_every_precision_and_data_parallel_without_helical_anndata_boto3(tmp_path):
    out = tmp_path / "gpu.json"
    result = run_bench(*SMALL, "--precisions", "fp32,bf16", "--dp-precision", "fp32", "--processes", "2",
                       "--json", str(out), tmp_path=tmp_path, blocked=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    runs = {run["precision"]: run for run in results["precisions"]}
    assert list(runs) == ["fp32", "bf16"]
    for run in runs.values():
        assert len(run["losses"]) == 1 + 4 and run["tokens_per_second"] > 0 and run["step_seconds"] > 0
    # same weights, same batches: bf16 follows fp32's loss curve up to rounding, and the marker tokens are learnt
    assert runs["bf16"]["losses"] == pytest.approx(runs["fp32"]["losses"], abs=0.05)
    assert runs["fp32"]["losses"][0] != runs["fp32"]["losses"][-1]
    dp = results["data_parallel"]
    assert dp["processes"] == 2 and dp["global_batch"] == 8 and len(dp["losses"]) == 5
    table = result.stdout
    assert "| fp32, 1 process |" in table and "| bf16, 1 process |" in table
    assert "| fp32, 2 processes (DDP), global batch 8 |" in table
