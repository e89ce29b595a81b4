"""check_input's worker check: a run whose profile's queue no live worker serves fails at once, in one line.

The broker's answer (Celery's inspect().active_queues()) is stood in for by a function here; the end-to-end
suite asks a real Celery over redis (tests/e2e: a GPU-profile run with and without a gpu worker)."""

from __future__ import annotations

import pytest

from helical_lib import workers
from helical_lib.plan import checked_plan
from helical_lib.settings import Settings
from helical_lib.workers import NoWorker, require_worker


def asked(served: set[str] | None):
    timeouts = []

    def ask(timeout: float):
        timeouts.append(timeout)
        return served
    return ask, timeouts


def test_a_served_queue_passes_after_one_short_ask():
    ask, timeouts = asked({"cpu", "gpu"})
    require_worker("gpu", "gpu-16gb", ask)
    assert timeouts == [workers.ASK_TIMEOUTS[0]]


def test_no_worker_on_the_queue_fails_at_once_with_how_to_start_one():
    ask, timeouts = asked({"cpu"})
    with pytest.raises(NoWorker) as info:
        require_worker("gpu", "gpu-16gb", ask)
    message = str(info.value)
    assert "\n" not in message
    assert "queue 'gpu'" in message and "profile gpu-16gb" in message and "queues served: cpu" in message
    # the command from the README / docker-compose-airflow.yaml's gpu profile
    assert "docker compose -f docker-compose-airflow.yaml --profile gpu up -d airflow-worker-gpu" in message
    assert timeouts == list(workers.ASK_TIMEOUTS)  # a late answer gets a second, longer chance
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(info.value, AirflowFailException)  # Airflow does not retry it


def test_a_queue_of_a_custom_profile_gets_the_worker_host_command():
    """A queue of its own is a host class: the way to serve it is a worker host (docker-compose-worker.yaml)."""
    with pytest.raises(NoWorker, match=r"queues served: none\): start one with `HELICAL_WORKER_QUEUES=a100 docker compose "
                       r"-f docker-compose-worker.yaml up -d`, on a host that can run it \(README \"Worker hosts\"\)"):
        require_worker("a100", "my-a100", asked(set())[0])


def test_without_celery_there_is_nothing_to_ask():
    require_worker("gpu", "gpu-16gb", asked(None)[0])
    assert workers.live_queues(0.1) is None  # these tests run Airflow's default LocalExecutor


def test_check_input_fails_on_a_profile_nobody_serves(moto_s3, monkeypatch):
    monkeypatch.setattr(workers, "live_queues", lambda timeout: {"cpu"})
    moto_s3.put_object(Bucket="helical", Key="incoming/atlas.h5ad", Body=b"x")
    params = {"data": "s3://helical/incoming/atlas.h5ad", "profile": "gpu-16gb", "label_column": "cell_type"}
    settings = Settings.from_env({})
    with pytest.raises(NoWorker, match="queue 'gpu'"):
        checked_plan(params, "manual__1", settings)
    assert checked_plan({**params, "profile": "cpu-small"}, "manual__1", settings)["queue"] == "cpu"
    assert "Contents" not in moto_s3.list_objects_v2(Bucket="helical", Prefix="quarantine/")  # not bad input
