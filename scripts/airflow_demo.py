"""`make demo`: the main job through a real Airflow on this machine (run by scripts/airflow-demo.sh).

Starts the venv-process stack (scripts/local_stack.py: Postgres, redis, moto's S3, MLflow's tracking server,
Airflow with Celery), writes a tiny random Geneformer and synthetic cells into data/demo, and then does what
a user does:
1. uploads a labelled .h5ad to incoming/: helical_ingest -> helical_finetune fine-tunes on its cell_type,
   tracks the run in MLflow and registers the model as version 1 of helical-cell_type, alias champion;
2. uploads new cells without labels to incoming/: helical_finetune finds no cell_type and hands the file to
   helical_annotate, which embeds the cells (clusters, UMAP) and annotates them with the champion.
Both runs are followed through the REST API, their outputs copied to data/demo/runs/<run_id>/, and their
summaries and MLflow URLs printed; then the stack stops. When a run fails, each failed task's one-line
reason (the runner's `helical-runner: error:` line, or the task's exception) is printed with its log's path.

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
DAGS = ("helical_ingest", "helical_finetune", "helical_annotate")
HANDOVER = "__annotate"  # helical_finetune hands an unlabelled upload to helical_annotate as <its run id>__annotate
RUNNER_ERROR = re.compile(r"helical-runner: error: .*")
EXCEPTION = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)")
TASK_EXCEPTION = "task raised "  # log_text's prefix for the exceptions Airflow's structured log records


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def prepare_data(data: Path, cells: str) -> tuple[Path, Path]:
    """The tiny model in helical's cache layout, the labelled synthetic cells and new unlabelled ones (their
    true types kept in obs['expected_cell_type'], a column no run is told about), written anew into
    data/demo each time (a few seconds), so files an older version of the demo left there are never reused."""
    (data / "scratch").mkdir(parents=True, exist_ok=True)
    say("writing a tiny random Geneformer with real human genes into data/demo/helical (helical's cache layout)")
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "model", "--cache-prefix",
                    str(data / "helical")], check=True, capture_output=True)
    h5ad = data / f"cells-{cells}.h5ad"
    say(f"writing {cells} synthetic cells to {h5ad.relative_to(REPO)}")
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(h5ad),
                    "--cells", cells, "--genes-per-cell", "150"], check=True, capture_output=True)
    new = data / "new-cells-unlabelled.h5ad"
    say(f"writing 600 new cells without a cell_type column to {new.relative_to(REPO)}")
    subprocess.run([str(RUNNER_PY), "-m", "helical_runner.data.synthetic", "data", "--output", str(new),
                    "--cells", "600", "--genes-per-cell", "150", "--seed", "7", "--label-column",
                    "expected_cell_type"], check=True, capture_output=True)
    for path in [data, *data.rglob("*")]:  # the runner image's user (50000) writes scratch and the cache
        path.chmod(0o777 if path.is_dir() else 0o666)
    return h5ad, new


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
    tracked = report.get("tracking") or {}
    registered = tracked.get("registered_model") or {}
    print(f"""  MLflow run   {tracked.get('url') or tracked.get('status')}
  registered   {registered.get('uri', 'not registered')}: {registered.get('reason', '')}""", flush=True)


def print_annotation(out: Path, summary: dict) -> None:
    """What helical_annotate gave the unlabelled cells, and how well the champion's labels agree with the
    types the demo kept aside (obs['expected_cell_type'], read with anndata in the runner's venv)."""
    rel = lambda name: (out / name).relative_to(REPO)  # noqa: E731
    agreement = subprocess.run([str(RUNNER_PY), "-c", """
import sys, anndata
obs = anndata.read_h5ad(sys.argv[1]).obs
print(f"{len(obs)} cells, {obs['leiden'].nunique()} Leiden clusters; champion's labels agree with the kept-aside "
      f"types for {(obs['predicted_cell_type'].astype(str) == obs['expected_cell_type'].astype(str)).mean():.1%}")
""", str(out / "predict" / "predictions.h5ad")], capture_output=True, text=True)
    print(f"""
annotated with {summary.get('model_uri')}: {agreement.stdout.strip() or agreement.stderr.strip()[-300:]}
  predictions  {rel('predict/predictions.h5ad')}  (obs + predicted_cell_type, prediction_confidence, leiden;
               obsm['X_geneformer'] of the fine-tuned model, obsm['X_umap'] of the pretrained embeddings)
  embeddings   {rel('embed/embeddings.h5ad')}, {rel('embed/umap.png')}
  report pages {rel('embed/report.html')}
               {rel('predict/report.html')}
  summary      {rel('summary.json')}""", flush=True)
    for label, name in (("MLflow runs", "mlflow_run_url"), ("", "prediction_mlflow_run_url"),
                        ("model page", "model_url")):
        if summary.get(name):
            print(f"  {label:<12} {summary[name]}", flush=True)


def copy_run(client, data: Path, run_id: str) -> Path:
    out = data / "runs" / run_id
    for obj in client.list_objects_v2(Bucket="helical", Prefix=f"runs/{run_id}/").get("Contents", []):
        target = out / obj["Key"].removeprefix(f"runs/{run_id}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("helical", obj["Key"], str(target))
    return out


def follow_upload(stack: Stack, dag_id: str, run_id: str, deadline: float, work: Path) -> str | None:
    """Wait for the run an upload starts (or a hand-over), then follow it to its end; its final state."""
    while time.monotonic() < deadline:
        if stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").status_code == 200:
            return follow(stack, dag_id, run_id, deadline)
        ingest = ingest_run_of(stack)
        if ingest and stack.get(f"/api/v2/dags/helical_ingest/dagRuns/{ingest}")["state"] == "failed":
            for line in failure_report(stack, "helical_ingest", ingest):
                say(line)
            raise SystemExit(f"helical_ingest failed before starting a run; logs in {work}")
        time.sleep(3)
    return None


def upload(client, path: Path) -> tuple[str, str]:
    key = f"incoming/{path.name}"
    etag = client.put_object(Bucket="helical", Key=key, Body=path.read_bytes())["ETag"]
    return key, layout.ingest_run_id(key, etag)


def report_failure(stack: Stack, dag_id: str, run_id: str, state: str | None, work: Path) -> None:
    say(f"{dag_id} run {run_id} {state or 'timed out'}")
    for line in failure_report(stack, dag_id, run_id):
        say(line)
    say(f"every log of this run is kept in {work}")


def main() -> int:
    mode, cells = os.environ["HELICAL_DEMO_MODE"], os.environ.get("HELICAL_DEMO_CELLS", "2000")
    data = REPO / "data" / "demo"
    h5ad, unlabelled = prepare_data(data, cells)
    work = Path(tempfile.mkdtemp(prefix="helical-demo-"))
    stack = Stack(work=work, data_dir=data, runner_mode=mode, engine_socket=os.environ.get("HELICAL_DEMO_ENGINE", ""),
                  mlflow=True)
    code = 1
    try:
        say("starting Postgres, redis, moto S3, MLflow's tracking server and Airflow (api-server, scheduler, "
            f"dag-processor, triggerer, Celery worker); logs in {work}")
        start = time.monotonic()
        stack.start()
        client = stack.s3()
        client.create_bucket(Bucket="helical")
        say(f"Airflow answers on http://127.0.0.1:{stack.ports['api']} (user admin, password {stack.password}) "
            f"after {time.monotonic() - start:.0f} s; MLflow on {stack.mlflow_url}")
        wait_for(lambda: set(DAGS) <= {d["dag_id"] for d in stack.get("/api/v2/dags")["dags"]}, 300, "the DAGs",
                 interval=2)
        where = "in helical-runner:cpu containers through the socket proxy" if mode == "docker" \
            else "as local processes"
        deadline = time.monotonic() + 3600

        key, run_id = upload(client, h5ad)
        say(f"1/2 uploaded labelled cells to s3://helical/{key}; helical_ingest will start helical_finetune "
            f"run {run_id}")
        state = follow_upload(stack, "helical_finetune", run_id, deadline, work)
        out = copy_run(client, data, run_id)
        if state != "success":
            report_failure(stack, "helical_finetune", run_id, state, work)
            return code
        say(f"run {state}, runner steps {where}; its outputs are in {out.relative_to(REPO)}/")
        print_outputs(out)

        key, run_id = upload(client, unlabelled)
        say(f"2/2 uploaded new cells without labels to s3://helical/{key}: helical_finetune run {run_id} finds no "
            "cell_type and hands them to helical_annotate")
        state = follow_upload(stack, "helical_finetune", run_id, deadline, work)
        annotate_run = f"{run_id}{HANDOVER}"
        if state == "success":
            state = follow_upload(stack, "helical_annotate", annotate_run, deadline, work)
        if state != "success":
            failed = "helical_annotate" if stack.api("GET", f"/api/v2/dags/helical_annotate/dagRuns/{annotate_run}"
                                                     ).status_code == 200 else "helical_finetune"
            report_failure(stack, failed, annotate_run if failed == "helical_annotate" else run_id, state, work)
            return code
        out = copy_run(client, data, annotate_run)
        say(f"annotation {state}; its outputs are in {out.relative_to(REPO)}/")
        print_annotation(out, json.loads((out / "summary.json").read_text()))
        say(f"MLflow's UI: {stack.mlflow_url} (experiments helical_finetune and helical_annotate, registered "
            "model helical-cell_type); it stops with the demo")
        code = 0
    finally:
        stack.stop()
        if code == 0:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
