"""`make demo`: the main job through a real Airflow on this machine (run by scripts/airflow-demo.sh).

Starts the venv-process stack (scripts/local_stack.py: Postgres, redis, moto's S3, Airflow with Celery),
writes a tiny random Geneformer and synthetic cells into data/demo, uploads the .h5ad to incoming/,
follows helical_ingest -> helical_finetune through the REST API, copies the run's outputs to
data/demo/runs/<run_id>/ and stops the stack. When the run fails, each failed task's one-line reason (the
runner's `helical-runner: error:` line, or the task's exception) is printed with the path of its full log.

Environment (set by airflow-demo.sh): HELICAL_DEMO_MODE docker|local, HELICAL_DEMO_ENGINE (the Docker engine's socket;
the stack starts the socket proxy and the runners' network on it), HELICAL_DEMO_CELLS (default 2000).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "dags")]
from local_stack import Stack, wait_for  # noqa: E402

from demo_tables import class_table  # noqa: E402
from helical_lib import s3 as layout  # noqa: E402

RUNNER_PY = REPO / ".venv-runner" / "bin" / "python"
DAGS = ("helical_ingest", "helical_finetune")
RUNNER_ERROR = re.compile(r"helical-runner: error: .*")
EXCEPTION = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)")
TASK_EXCEPTION = "task raised "  # log_text's prefix for the exceptions Airflow's structured log records


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def prepare_data(data: Path, cells: str) -> Path:
    """The tiny model in helical's cache layout and the synthetic cells, written anew into data/demo each
    time (a few seconds), so files an older version of the demo left there are never reused."""
    (data / "scratch").mkdir(parents=True, exist_ok=True)
    say("writing a tiny random Geneformer with real human genes into data/demo/helical (helical's cache layout)")
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "model", "--cache-prefix",
                    str(data / "helical")], check=True, capture_output=True)
    h5ad = data / f"cells-{cells}.h5ad"
    say(f"writing {cells} synthetic cells to {h5ad.relative_to(REPO)}")
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(h5ad),
                    "--cells", cells, "--genes-per-cell", "150"], check=True, capture_output=True)
    for path in [data, *data.rglob("*")]:  # the runner image's user (50000) writes scratch and the cache
        path.chmod(0o777 if path.is_dir() else 0o666)
    return h5ad


def task_reason(text: str) -> str:
    """The one line that says why a task failed: the runner's own error line if it printed one, else the
    last exception the task log names, else a pointer to the log."""
    runner = RUNNER_ERROR.findall(text)
    if runner:
        return runner[-1].strip()
    raised = [line.removeprefix(TASK_EXCEPTION) for line in text.splitlines() if line.startswith(TASK_EXCEPTION)]
    if raised:  # what the task raised, as Airflow recorded it (any exception class, e.g. BadInput)
        return raised[-1].strip()
    exceptions = EXCEPTION.findall(text)
    if exceptions:
        kind, message = exceptions[-1]
        return f"{kind}: {message.strip()}"
    return "no error line in the task log"


def log_text(payload) -> str:
    """The text of a task log as the REST API returns it (Airflow 3: {"content": [{"event": ...,
    "error_detail": [{"exc_type", "exc_value"}]}, ...]}), one event per line."""
    content = payload.get("content", payload) if isinstance(payload, dict) else payload
    if not isinstance(content, list):
        return str(content)
    lines = []
    for item in content:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        lines.append(str(item.get("event", "")))
        for error in item.get("error_detail") or []:
            if isinstance(error, dict):
                lines.append(f"{TASK_EXCEPTION}{error.get('exc_type')}: {error.get('exc_value')}")
    return "\n".join(lines)


def failure_report(stack: Stack, dag_id: str, run_id: str) -> list[str]:
    """One line per failed task instance of the run: task, reason, and where its full log is."""
    lines = []
    tis = stack.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    for ti in tis:
        if ti["state"] != "failed":
            continue
        try_number = max(int(ti.get("try_number") or 1), 1)
        log = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/"
                               f"{try_number}", params={"full_content": "true"})
        reason = task_reason(log_text(log.json())) if log.status_code == 200 else f"(task log unavailable: HTTP {log.status_code})"
        task = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
        files = sorted((stack.work / "airflow" / "logs").glob(
            f"dag_id={dag_id}/run_id={run_id}/task_id={ti['task_id']}/**/attempt={try_number}.log"))
        where = str(files[0]) if files else f"Airflow UI, run {run_id}"
        lines.append(f"{dag_id}.{task} failed: {reason}\n[demo]     full log: {where}")
    return lines


def follow(stack: Stack, dag_id: str, run_id: str, deadline: float) -> str | None:
    """Poll the run until it succeeds or fails, printing each task's state changes; its final state."""
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        response = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if response.status_code == 200:
            state = response.json()["state"]
            for ti in stack.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
                name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
                if ti["state"] and seen.get(name) != ti["state"]:
                    seen[name] = ti["state"]
                    say(f"  {dag_id:<17} {name:<22} {ti['state']}")
            if state in ("success", "failed"):
                return state
        if stack.dead():
            raise SystemExit(f"stack processes died: {stack.dead()} (logs in {stack.work})")
        time.sleep(3)
    return None


def ingest_run_of(stack: Stack) -> str | None:
    """The helical_ingest run that picked up the upload (the first one that is not still waiting)."""
    runs = stack.get("/api/v2/dags/helical_ingest/dagRuns", limit=20)["dag_runs"]
    done = [r for r in runs if r["state"] in ("success", "failed")]
    return done[0]["dag_run_id"] if done else None


def print_outputs(out: Path) -> None:
    """The headline figures, the per-class table of the predictions and where each output is."""
    report = json.loads((out / "report.json").read_text())
    predicted = json.loads((out / "predict" / "report.json").read_text())
    rel = lambda name: (out / name).relative_to(REPO)  # noqa: E731
    print(f"""
validation accuracy {report['accuracy']:.3f}, {report['throughput']['cells_per_second']:.1f} cells/s; prediction accuracy \
{predicted['accuracy']:.3f} (macro-F1 {predicted['macro_f1']:.3f}) on {predicted['cells']['predicted']} cells:
{class_table(predicted['class_metrics'])}
  report pages {rel('report.html')}
               {rel('predict/report.html')}
  report       {rel('report.json')}, {rel('summary.json')}
  pictures     {rel('training_curves.png')}  ({report['steps']} steps, one point each)
               {rel('confusion_matrix.png')}
               {rel('predict/umap.png')}
  predictions  {rel('predict/predictions.h5ad')}  (obs + predictions + obsm['X_geneformer'])
               {rel('predict/predictions.csv')}
  model        {rel('model')}""", flush=True)


def main() -> int:
    mode, cells = os.environ["HELICAL_DEMO_MODE"], os.environ.get("HELICAL_DEMO_CELLS", "2000")
    data = REPO / "data" / "demo"
    h5ad = prepare_data(data, cells)
    work = Path(tempfile.mkdtemp(prefix="helical-demo-"))
    stack = Stack(work=work, data_dir=data, runner_mode=mode, engine_socket=os.environ.get("HELICAL_DEMO_ENGINE", ""))
    code = 1
    try:
        say("starting Postgres, redis, moto S3 and Airflow (api-server, scheduler, dag-processor, triggerer, "
            f"Celery worker); logs in {work}")
        start = time.monotonic()
        stack.start()
        client = stack.s3()
        client.create_bucket(Bucket="helical")
        say(f"Airflow answers on http://127.0.0.1:{stack.ports['api']} (user admin, password {stack.password}) "
            f"after {time.monotonic() - start:.0f} s")
        wait_for(lambda: set(DAGS) <= {d["dag_id"] for d in stack.get("/api/v2/dags")["dags"]}, 300, "the DAGs",
                 interval=2)
        key = f"incoming/{h5ad.name}"
        etag = client.put_object(Bucket="helical", Key=key, Body=h5ad.read_bytes())["ETag"]
        run_id = layout.ingest_run_id(key, etag)
        say(f"uploaded s3://helical/{key}; helical_ingest will start helical_finetune run {run_id}")
        deadline = time.monotonic() + 3600
        state = None
        while time.monotonic() < deadline and state is None:
            if stack.api("GET", f"/api/v2/dags/helical_finetune/dagRuns/{run_id}").status_code == 200:
                state = follow(stack, "helical_finetune", run_id, deadline)
                break
            ingest = ingest_run_of(stack)
            if ingest and stack.get(f"/api/v2/dags/helical_ingest/dagRuns/{ingest}")["state"] == "failed":
                for line in failure_report(stack, "helical_ingest", ingest):
                    say(line)
                raise SystemExit(f"helical_ingest failed before starting a run; logs in {work}")
            time.sleep(3)
        out = data / "runs" / run_id
        for obj in client.list_objects_v2(Bucket="helical", Prefix=f"runs/{run_id}/").get("Contents", []):
            target = out / obj["Key"].removeprefix(f"runs/{run_id}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file("helical", obj["Key"], str(target))
        where = "in helical-runner:cpu containers through the socket proxy" if mode == "docker" \
            else "as local processes"
        say(f"run {state or 'timed out'}, runner steps {where}; its outputs are in {out.relative_to(REPO)}/")
        if state == "success":
            print_outputs(out)
            code = 0
        else:
            for line in failure_report(stack, "helical_finetune", run_id):
                say(line)
            say(f"every log of this run is kept in {work}")
    finally:
        stack.stop()
        if code == 0:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
