"""Is a live Celery worker serving a queue? Asked over the broker when a run starts, so a run whose profile's
queue nobody serves fails at once with how to start a worker, instead of sitting "queued" with no word.

Backstop for a worker lost later: `[scheduler] task_queued_timeout` (docker-compose-airflow.yaml) fails a
task left in a queue too long.
"""

from __future__ import annotations

from typing import Callable

from airflow.sdk.exceptions import AirflowFailException

# Seconds to wait for workers' replies: Celery's broadcast waits the whole timeout, so a short first ask, and
# a longer second one before giving up, in case a busy worker answers late.
ASK_TIMEOUTS = (2.0, 5.0)
# How to start a worker per queue, as the README and docker-compose-airflow.yaml say.
START_WORKER = {
    "cpu": "docker compose -f docker-compose-airflow.yaml up -d airflow-worker",
    "gpu": "docker compose -f docker-compose-airflow.yaml --profile gpu up -d airflow-worker-gpu",
}


class NoWorker(AirflowFailException):
    """No live worker serves the queue: fail without retries (a retry in seconds would find none either)."""


def live_queues(timeout: float) -> set[str] | None:
    """Names of the queues at least one Celery worker consumes from, among the workers that answered
    within `timeout` seconds (Celery's control.inspect().active_queues() over the broker); None when
    the executor is not Celery (nothing to ask)."""
    from airflow.configuration import conf

    if "CeleryExecutor" not in conf.get("core", "executor"):
        return None
    from airflow.providers.celery.executors.celery_executor_utils import app

    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues or ()}


# Any other queue is a host class of its own: a worker host started for it (docker-compose-worker.yaml).
START_WORKER_HOST = "HELICAL_WORKER_QUEUES={queue} docker compose -f docker-compose-worker.yaml up -d"


def start_command(queue: str) -> str:
    return START_WORKER.get(queue, START_WORKER_HOST.format(queue=queue))


def require_worker(queue: str, profile: str, ask: Callable[[float], set[str] | None] | None = None) -> None:
    """Return if a live worker serves `queue` (or the executor has no queues); else raise NoWorker with one
    line: the queue, the profile that asked for it, the queues that are served, and how to start a worker.

    ask(timeout) -> served queues (default live_queues)."""
    live: set[str] | None = set()
    for timeout in ASK_TIMEOUTS:
        live = (ask or live_queues)(timeout)
        if live is None or queue in live:
            return
    raise NoWorker(f"no live Celery worker serves queue '{queue}', which profile {profile} runs on (queues "
                   f"served: {', '.join(sorted(live)) or 'none'}): start one with `{start_command(queue)}`, "
                   f"on a host that can run it (README \"Worker hosts\"), or pick a profile on a served queue, then trigger the run again")
