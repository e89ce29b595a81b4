"""MLflow tracking of runner steps: one MLflow run per step's output, when MLFLOW_TRACKING_URI is set.

As MLflow's own examples and scvi-tools' integration do: parameters once at the start, metrics with their
`step`, artifacts at the end, and the orchestrator's ids as tags (airflow.dag_id, airflow.run_id,
airflow.task_id), so the two systems point at each other. The experiment is the Airflow DAG
($HELICAL_DAG_ID; "helical-runner" outside Airflow).

A run is keyed by the step's output prefix and command (tags helical.output, helical.command): a retry that
resumes finds the same MLflow run and continues it, and logs only the steps past those already in it, so a
killed and resumed fine-tune leaves one run whose loss history has one point per optimisation step.

A fine-tune is worth more than its tracking: every call goes into a queue that a background thread sends, in
order. When the server can't be reached the step goes on, says so once, and keeps the queue; it is sent when
the server answers again. At the end the step waits up to $HELICAL_MLFLOW_WAIT_SECONDS (default 60) for the
queue to drain; what was still not sent is named in report.json's "tracking" and in the log.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
UI_URL_ENV = "HELICAL_MLFLOW_UI_URL"  # the URL a person opens, when it differs from the one runners use
DEFAULT_EXPERIMENT = "helical-runner"
# the runner's progress names -> MLflow metric names (logged at the current optimisation step)
METRIC_NAMES = {"loss": "loss", "lr": "learning_rate", "cells_per_second": "cells_per_second",
                "val_accuracy": "validation_accuracy", "val_loss": "validation_loss",
                "val_macro_f1": "validation_macro_f1"}
AIRFLOW_TAGS = {"airflow.dag_id": "HELICAL_DAG_ID", "airflow.run_id": "HELICAL_RUN_ID",
                "airflow.task_id": "HELICAL_TASK_ID", "airflow.try_number": "HELICAL_TRY_NUMBER"}
MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per request


class NoTracking:
    """MLFLOW_TRACKING_URI unset: every call does nothing, and the report says why."""

    enabled = False
    on_open = None

    def start(self, params: dict) -> "NoTracking":
        return self

    def progress(self, values: dict) -> None:
        pass

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        pass

    def log_history(self, series: dict, validation: list) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        pass

    def register_model(self, name: str, promote: str, tags: dict, macro_f1: float | None) -> None:
        pass

    def summary(self, wait: bool = True) -> dict:
        return {"status": f"not tracked ({TRACKING_URI_ENV} is not set)"}

    def finish(self, status: str = "FINISHED") -> dict:
        return self.summary()


def from_env(command: str, output: str, run_name: str, scratch: Path | None = None) -> "Tracking | NoTracking":
    """The step's tracking: a Tracking when $MLFLOW_TRACKING_URI is set, else NoTracking."""
    uri = os.environ.get(TRACKING_URI_ENV, "").strip()
    if not uri:
        return NoTracking()
    tags = {"helical.command": command, "helical.output": output,
            **{tag: os.environ[var] for tag, var in AIRFLOW_TAGS.items() if os.environ.get(var)}}
    return Tracking(uri, experiment=os.environ.get("HELICAL_DAG_ID") or DEFAULT_EXPERIMENT,
                    run_name=f"{run_name} {command}", tags=tags, ui_url=os.environ.get(UI_URL_ENV, "").strip(),
                    spool_root=scratch, wait_seconds=float(os.environ.get("HELICAL_MLFLOW_WAIT_SECONDS", "60")))


class Tracking:
    """The queue of MLflow calls for one runner step, and the thread that sends it (module docstring)."""

    enabled = True

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str], ui_url: str = "",
                 spool_root: Path | None = None, wait_seconds: float = 60.0, flush_seconds: float = 5.0):
        # fail fast and let the queue retry: MLflow's HTTP client alone backs off for minutes per call
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri, self.experiment, self.run_name, self.tags = uri, experiment, run_name, tags
        self.ui_url = (ui_url or uri).rstrip("/")
        self.wait_seconds, self.flush_seconds = wait_seconds, flush_seconds
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.logged_through_step = -1  # steps an earlier attempt already logged (a resumed retry skips them)
        self.registered: dict | None = None
        self.error: str | None = None
        self.on_open: Callable[["Tracking"], None] | None = None  # told the run once it is known
        self._deadline: float | None = None  # the end's wait for the queue, shared by summary() and finish()
        self._params: dict[str, str] = {}
        self._metrics: list = []  # mlflow Metric entities waiting to be sent
        self._calls: deque[tuple[str, Callable]] = deque()  # (what, call(client)) waiting, in order
        self._step = 0
        self._lock = threading.Lock()  # guards the queues
        self._send_lock = threading.Lock()  # one sender at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._spool = Path(tempfile.mkdtemp(prefix="mlflow-", dir=spool_root)) if spool_root else \
            Path(tempfile.mkdtemp(prefix="mlflow-"))
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # --- what the commands call --------------------------------------------------------------------------
    def start(self, params: dict) -> "Tracking":
        """Queue the run's parameters, try once to open the run now (so the log names it early), and start
        the sending thread."""
        self.log_params(params)
        self.flush()
        self._thread = threading.Thread(target=self._loop, name="mlflow-tracking", daemon=True)
        self._thread.start()
        return self

    def progress(self, values: dict) -> None:
        """A RunMetrics listener: the training loop's step, loss, learning rate, throughput and validation
        figures become metrics at the current optimisation step."""
        if values.get("step") is not None:
            self._step = int(values["step"])
        metrics = {METRIC_NAMES[k]: v for k, v in values.items() if k in METRIC_NAMES and v is not None}
        if metrics:
            self.log_metrics(metrics, self._step)

    def log_params(self, params: dict) -> None:
        with self._lock:
            for key, value in params.items():
                if value not in (None, "", [], ()):
                    self._params[str(key)] = str(value)[:6000]  # MLflow's param value limit

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._metrics.extend(Metric(key, float(value), now, int(step)) for key, value in metrics.items()
                                 if value is not None)

    def log_history(self, series: dict[str, list[float]], validation: list[dict]) -> None:
        """A resumed step's history from its checkpoint: per-step series (index i is step i + 1) and the
        validation entries ({"step", "val_accuracy", ...}). The steps an earlier attempt already sent are
        dropped when sending; the rest (trained before the checkpoint, never sent before the kill) are sent."""
        for name, values in series.items():
            for i, value in enumerate(values):
                self.log_metrics({name: value}, step=i + 1)
        for entry in validation:
            self.progress({k: v for k, v in entry.items() if k != "step"} | {"step": entry["step"]})
        self._step = max(self._step, max((len(v) for v in series.values()), default=0))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Queue a file (copied now: the caller's temporary folder may be gone when it is sent)."""
        kept = self._keep(Path(path))
        self._queue(f"artifact {Path(path).name}",
                    lambda client: client.log_artifact(self.run_id, str(kept), artifact_path))

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        """Queue `data` as the artifact file `name` (report.json, report.html, a picture)."""
        folder = self._spool / f"{len(os.listdir(self._spool))}"
        folder.mkdir()
        (folder / name).write_bytes(data)
        self._queue(f"artifact {name}", lambda client: client.log_artifact(self.run_id, str(folder / name),
                                                                            artifact_path))

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        kept = self._keep(Path(folder))
        self._queue(f"artifacts {artifact_path}/",
                    lambda client: client.log_artifacts(self.run_id, str(kept), artifact_path))

    def register_model(self, name: str, promote: str, tags: dict, macro_f1: float | None,
                       artifact_path: str = "model") -> None:
        """Queue: register the run's `artifact_path` as a new version of `name` and apply the promotion rule
        (registry.register)."""
        from helical_runner.tracking import registry

        def call(client):
            self.registered = registry.register(client, name, self.run_id, artifact_path, tags, macro_f1, promote)

        self._queue(f"model version of {name}", call)

    def summary(self, wait: bool = True) -> dict:
        """Where the run is, for report.json: waits (up to wait_seconds) for the queue to be sent first."""
        if wait:
            self._drain()
        pending = self._pending()
        result = {"status": "logged" if not pending and self.run_id else "incomplete",
                  "tracking_uri": self.uri, "experiment": self.experiment, "experiment_id": self.experiment_id,
                  "mlflow_run_id": self.run_id, "url": self.url, "resumed": self.resumed}
        if pending:
            result["not_logged"] = pending
            result["error"] = self.error
        if self.registered:
            result["registered_model"] = self.registered
        return result

    def finish(self, status: str = "FINISHED") -> dict:
        """End the run (FINISHED or FAILED): queue its status, stop the thread, wait for the queue (a failed
        step waits 10 s at most: its error matters more than its tracking)."""
        if status != "FINISHED" and self._deadline is None:
            self._deadline = time.monotonic() + min(self.wait_seconds, 10)
        self._queue(f"run status {status}", lambda client: client.set_terminated(self.run_id, status))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        result = self.summary(wait=True)
        if result["status"] != "logged":  # said once as a warning when it stopped answering; this is the detail
            log.info("MLflow at %s: not logged: %s (%s); report.json's tracking says so too", self.uri,
                     ", ".join(result["not_logged"]), self.error)
        shutil.rmtree(self._spool, ignore_errors=True)
        return result

    @property
    def url(self) -> str | None:
        if not (self.run_id and self.experiment_id):
            return None
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # --- sending ----------------------------------------------------------------------------------------
    def _keep(self, path: Path) -> Path:
        target = self._spool / f"{len(os.listdir(self._spool))}" / path.name
        target.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
        return target

    def _queue(self, what: str, call: Callable) -> None:
        with self._lock:
            self._calls.append((what, call))

    def _pending(self) -> list[str]:
        with self._lock:
            pending = [what for what, _ in self._calls]
            if self._params:
                pending.insert(0, f"{len(self._params)} parameters")
            if self._metrics:
                pending.insert(0, f"{len(self._metrics)} metric values")
        if not self.run_id:
            pending.insert(0, "the run itself")
        return pending

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def _drain(self) -> None:
        """Send the queue, retrying until it is empty or the end's deadline (wait_seconds after the first
        wait, plus a little for the last calls) has passed."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.wait_seconds
        deadline = max(self._deadline, time.monotonic() + 5)
        while True:
            if self.flush() and not self._pending():
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def flush(self) -> bool:
        """Send what is queued, in order; False (and one warning per outage) when the server failed."""
        with self._send_lock:
            try:
                if not self.run_id:
                    self._open()
                self._send_params()
                self._send_metrics()
                while True:
                    with self._lock:
                        if not self._calls:
                            break
                        what, call = self._calls[0]
                    call(self._client)
                    with self._lock:
                        self._calls.popleft()
            except Exception as exc:  # noqa: BLE001 - tracking must never fail the step
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                if not self._warned:
                    log.warning("MLflow at %s did not answer (%s): the step goes on; what it missed is sent "
                                "when it answers again", self.uri, self.error)
                    self._warned = True
                return False
            if self._warned:
                log.info("MLflow at %s answers again: the queued tracking was sent", self.uri)
                self._warned = False
            return True

    def _open(self) -> None:
        """Find this step's run (an earlier attempt's) or create it; a found run's logged steps are skipped."""
        client = self._client
        experiment = client.get_experiment_by_name(self.experiment)
        self.experiment_id = experiment.experiment_id if experiment else _create_experiment(client, self.experiment)
        found = client.search_runs(
            [self.experiment_id], order_by=["attributes.start_time ASC"], max_results=1,
            filter_string=" and ".join(f"tags.`{key}` = '{_quoted(self.tags[key])}'"
                                       for key in ("helical.output", "helical.command")))
        if found:
            run = found[0]
            self.resumed = True
            history = client.get_metric_history(run.info.run_id, "loss")
            self.logged_through_step = max((m.step for m in history), default=-1)
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            log.info("continuing MLflow run %s of an earlier attempt (steps through %d already logged)",
                     run.info.run_id, self.logged_through_step)
        else:
            run = client.create_run(self.experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (experiment %s): %s", self.run_id, self.experiment, self.url)
        if self.on_open is not None:
            self.on_open(self)

    def _send_params(self) -> None:
        from mlflow.entities import Param

        with self._lock:
            params = dict(self._params)
        if not params:
            return
        existing = self._client.get_run(self.run_id).data.params if self.resumed else {}
        # a resumed run keeps the values it was started with (MLflow refuses to change a logged param)
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), 100):
            self._client.log_batch(self.run_id, params=new[start:start + 100])
        with self._lock:
            for key in params:
                self._params.pop(key, None)

    def _send_metrics(self) -> None:
        while True:
            with self._lock:
                batch = self._metrics[:MAX_BATCH]
            if not batch:
                return
            # steps an earlier attempt logged (the resumed stretch is trained again) are not logged twice
            fresh = [m for m in batch if m.step > self.logged_through_step or m.key not in _STEP_KEYED]
            if fresh:
                self._client.log_batch(self.run_id, metrics=fresh)
            with self._lock:
                del self._metrics[:len(batch)]


_STEP_KEYED = set(METRIC_NAMES.values())  # the per-step metrics; final figures are logged once


def _create_experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:  # another step created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def _quoted(value: str) -> str:
    """A value inside MLflow's search filter's single quotes."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
