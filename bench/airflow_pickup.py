"""Issue 3's benchmark: how soon an upload starts its runner, beside a default S3KeySensor, and DAG parse time.

Starts the end-to-end test stack (scripts/local_stack.py: Postgres, redis, moto S3, Airflow's api-server,
scheduler, dag-processor, triggerer and a Celery worker), with runner steps as local processes (or in
containers with HELICAL_E2E_MODE=docker and HELICAL_E2E_ENGINE), then uploads N small .h5ad files one
at a time and measures, for each, upload -> helical_finetune run created and upload -> its first runner
step (chunk) started. Each run finishes before the next upload, so the figures are not queueing delays.

A default S3KeySensor pokes every 60 s: an upload at a random moment waits 30 s on average (60 s at
worst) before the sensor even sees it; that is the reference beside our median.

Run with the Airflow venv: .venv-airflow/bin/python bench/airflow_pickup.py [--uploads 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "dags")]
from local_stack import Stack, wait_for  # noqa: E402

from helical_lib import s3 as layout  # noqa: E402

RUNNER_PY = REPO / ".venv-runner" / "bin" / "python"
DEFAULT_SENSOR_POKE = 60.0  # S3KeySensor's default poke_interval, seconds


def parse_seconds(dag_file: Path, home: Path, repeats: int = 5) -> float:
    """Median wall time of parsing one DAG file into a DagBag (a fresh interpreter each time)."""
    code = ("import time, sys; from airflow.dag_processing.dagbag import DagBag; t = time.perf_counter(); "
            "bag = DagBag(sys.argv[1]); "
            "assert not bag.import_errors, bag.import_errors; print(time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW_HOME": str(home)}  # never the user's ~/airflow
    times = [float(subprocess.run([sys.executable, "-c", code, str(dag_file)], capture_output=True, text=True,
                                  check=True, env=env).stdout.strip().splitlines()[-1]) for _ in range(repeats)]
    return statistics.median(times)


def started_at(stack: Stack, run_id: str) -> datetime | None:
    tis = stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}/taskInstances")["task_instances"]
    starts = [ti["start_date"] for ti in tis if ti["task_id"] == "chunk" and ti.get("start_date")]
    return datetime.fromisoformat(starts[0].replace("Z", "+00:00")) if starts else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=5)
    args = parser.parse_args()
    mode = os.environ.get("HELICAL_E2E_MODE", "local")
    work = Path(tempfile.mkdtemp(prefix="helical-bench-pickup-"))
    data = work / "data"
    (data / "scratch").mkdir(parents=True)
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "model", "--cache-prefix", str(data / "helical")],
                   check=True, capture_output=True)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)

    parse = {name: parse_seconds(REPO / "dags" / f"{name}.py", work / "parse-home") for name in ("helical_finetune", "helical_ingest")}
    stack = Stack(work=work, data_dir=data, runner_mode=mode,
                  engine_socket=os.environ.get("HELICAL_E2E_ENGINE", "unix:///var/run/docker.sock").removeprefix("unix://"))
    created, started = [], []
    try:
        stack.start()
        s3 = stack.s3()
        s3.create_bucket(Bucket="helical")
        wait_for(lambda: any(ti["state"] == "deferred" for run in stack.get("/api/v2/dags/helical_ingest/dagRuns")[
            "dag_runs"] for ti in stack.get(f"/api/v2/dags/helical_ingest/dagRuns/{run['dag_run_id']}/taskInstances")[
            "task_instances"]), 240, "the ingest sensor to defer", interval=2)
        for i in range(args.uploads):
            h5ad = work / f"cells-{i}.h5ad"
            subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(h5ad), "--cells",
                            "200", "--seed", str(i)], check=True, capture_output=True)
            key = f"incoming/pickup-{i}.h5ad"
            put_wall, put = datetime.now().astimezone(), time.monotonic()
            etag = s3.put_object(Bucket="helical", Key=key, Body=h5ad.read_bytes())["ETag"]
            run_id = layout.ingest_run_id(key, etag)
            wait_for(lambda: stack.api("GET", f"/api/v2/dags/helical_finetune/dagRuns/{run_id}").status_code == 200,
                     120, f"run {run_id}", interval=0.25)
            created.append(time.monotonic() - put)
            start = wait_for(lambda: started_at(stack, run_id), 300, "the chunk step to start", interval=0.5)
            started.append((start - put_wall).total_seconds())
            print(f"upload {i + 1}: run created after {created[-1]:.1f} s, runner step started after "
                  f"{started[-1]:.1f} s", flush=True)
            wait_for(lambda: stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}")["state"]
                     in ("success", "failed"), 1200, "the run to finish", interval=2)
    finally:
        stack.stop()
    result = {"mode": mode, "uploads": args.uploads, "created_seconds": created, "started_seconds": started,
              "median_created_seconds": statistics.median(created), "median_started_seconds": statistics.median(started),
              "default_sensor_mean_wait_seconds": DEFAULT_SENSOR_POKE / 2,
              "default_sensor_worst_wait_seconds": DEFAULT_SENSOR_POKE, "parse_seconds": parse}
    out = REPO / "bench" / "results" / "airflow-pickup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"""
| Measure | Ours (median of {args.uploads}) | Default S3KeySensor (60 s poke) | Ratio |
|---|---|---|---|
| upload -> run created | {result['median_created_seconds']:.1f} s | 30 s mean, 60 s worst (before it even sees the object) | {result['median_created_seconds'] / 30:.2f} of the mean |
| upload -> runner step started ({mode}) | {result['median_started_seconds']:.1f} s | 30 s + the same scheduling | |
| DAG parse, helical_finetune.py | {parse['helical_finetune'] * 1000:.0f} ms | | |
| DAG parse, helical_ingest.py | {parse['helical_ingest'] * 1000:.0f} ms | | |
""")


if __name__ == "__main__":
    main()
