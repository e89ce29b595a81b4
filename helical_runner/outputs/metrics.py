"""Live run metrics pushed to a Prometheus Pushgateway (when `PUSHGATEWAY_URL` is set).

A background thread pushes every `PUSH_INTERVAL_SECONDS` (default 5) and once more at the end, also on
failure, so a dashboard shows progress while the run is alive and its final state after the container
is gone. Each run pushes to its own group {job="helical_runner", run_id, command}: concurrent runs never
overwrite each other. A push that fails is logged and never fails the run.

Names (the monitoring dashboards and alert rules use exactly these):
  helical_runner_info{model,profile,precision,device,dag_id,task_id,host}  1 (host: the worker host, $HELICAL_HOST)
  helical_runner_status{status="running|succeeded|failed"}            1 for the current status, else 0
  helical_runner_cells_processed, helical_runner_chunks_done, helical_runner_chunks_total,
  helical_runner_cells_per_second, helical_runner_loss, helical_runner_validation_accuracy,
  helical_runner_learning_rate, helical_runner_epoch, helical_runner_step,
  helical_runner_peak_rss_bytes, helical_runner_memory_limit_bytes,
  helical_runner_cuda_memory_allocated_bytes, helical_runner_cuda_memory_reserved_bytes,
  helical_runner_start_time_seconds, helical_runner_duration_seconds, helical_runner_last_update_time_seconds
  helical_runner_mlflow_run_info{mlflow_run_id,experiment_id,url}      1, once the step's MLflow run is known
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from helical_runner.resources import cuda_memory_bytes, peak_rss_bytes

log = logging.getLogger(__name__)

JOB = "helical_runner"
STATUSES = ("running", "succeeded", "failed")
GAUGES = {
    "cells_processed": "Cells through the model so far (all epochs)",
    "chunks_done": "Chunks finished so far (all epochs)",
    "chunks_total": "Chunks the run will process (all epochs)",
    "cells_per_second": "Throughput over the last chunk",
    "loss": "Training loss of the last step",
    "validation_accuracy": "Accuracy on the held-out cells at the last evaluation",
    "learning_rate": "Current learning rate",
    "epoch": "Current epoch (1-based)",
    "step": "Optimisation steps so far",
    "memory_limit_bytes": "Memory cap of the run's resource profile",
}
_ALIASES = {"cells": "cells_processed", "lr": "learning_rate", "val_accuracy": "validation_accuracy"}


class RunMetrics:
    def __init__(self, command: str, run_id: str, info: dict[str, str], gateway: str | None = None,
                 interval: float | None = None):
        self.command = command
        self.run_id = run_id
        self.gateway = gateway if gateway is not None else os.environ.get("PUSHGATEWAY_URL", "")
        self.interval = interval or float(os.environ.get("PUSH_INTERVAL_SECONDS", "5"))
        self.started = time.time()
        self.values: dict[str, float] = {}
        self.status = "running"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self.listeners: list = []  # called with each update's values (MLflow tracking: helical_runner.tracking)
        self.registry = CollectorRegistry()
        info_labels = {"model": "", "profile": "", "precision": "", "device": "", "dag_id": "", "task_id": "",
                       "host": os.environ.get("HELICAL_HOST", "")}
        info_labels.update({k: str(v) for k, v in info.items() if k in info_labels})
        Gauge(f"{JOB}_info", "What the run is", list(info_labels), registry=self.registry).labels(**info_labels).set(1)
        self._status = Gauge(f"{JOB}_status", "1 for the run's current status", ["status"], registry=self.registry)
        self._gauges = {name: Gauge(f"{JOB}_{name}", doc, registry=self.registry) for name, doc in GAUGES.items()}
        self._peak_rss = Gauge(f"{JOB}_peak_rss_bytes", "Peak resident memory of the runner", registry=self.registry)
        self._cuda_alloc = Gauge(f"{JOB}_cuda_memory_allocated_bytes", "Peak CUDA memory allocated",
                                 registry=self.registry)
        self._cuda_reserved = Gauge(f"{JOB}_cuda_memory_reserved_bytes", "Peak CUDA memory reserved",
                                    registry=self.registry)
        self._mlflow = Gauge(f"{JOB}_mlflow_run_info", "The step's MLflow run (helical_runner.tracking)",
                             ["mlflow_run_id", "experiment_id", "url"], registry=self.registry)
        Gauge(f"{JOB}_start_time_seconds", "Unix time the run started", registry=self.registry).set(self.started)
        self._duration = Gauge(f"{JOB}_duration_seconds", "Seconds since the run started", registry=self.registry)
        self._updated = Gauge(f"{JOB}_last_update_time_seconds", "Unix time of this push", registry=self.registry)

    def name_mlflow_run(self, run_id: str, experiment_id: str, url: str) -> None:
        """Label the pushed metrics with the step's MLflow run, so a dashboard leads to it."""
        self._mlflow.clear()
        self._mlflow.labels(mlflow_run_id=run_id, experiment_id=experiment_id, url=url).set(1)

    @property
    def enabled(self) -> bool:
        return bool(self.gateway)

    def update(self, **values: float) -> None:
        with self._lock:
            for name, value in values.items():
                if value is not None:
                    self.values[_ALIASES.get(name, name)] = float(value)
        for listener in self.listeners:
            listener(values)

    def start(self) -> "RunMetrics":
        if self.enabled:
            self.push()
            self._thread = threading.Thread(target=self._loop, name="metrics-push", daemon=True)
            self._thread.start()
        return self

    def finish(self, status: str) -> None:
        self.status = status
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.enabled:
            self.push()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def _refresh(self) -> None:
        with self._lock:
            values = dict(self.values)
        for name, gauge in self._gauges.items():
            if name in values:
                gauge.set(values[name])
        for status in STATUSES:
            self._status.labels(status=status).set(1 if status == self.status else 0)
        self._peak_rss.set(peak_rss_bytes())
        allocated, reserved = cuda_memory_bytes()
        self._cuda_alloc.set(allocated)
        self._cuda_reserved.set(reserved)
        now = time.time()
        self._duration.set(now - self.started)
        self._updated.set(now)

    def push(self) -> None:
        self._refresh()
        try:
            push_to_gateway(self.gateway, job=JOB, registry=self.registry, timeout=5,
                            grouping_key={"run_id": self.run_id, "command": self.command})
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a run
            if not self._warned:
                log.warning("could not push metrics to %s: %s (the run goes on)", self.gateway, exc)
                self._warned = True
