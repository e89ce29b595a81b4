"""helical_annotate's check_input against a real MLflow server (tests/mlflow_server.py: `mlflow server` from
.venv-mlflow, artifacts on moto's S3 server): the registered model, alias and versions are made through
MLflow's REST API, as the runner's finetune makes them, and resolved by the DAG side's httpx client."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from airflow.sdk.exceptions import AirflowFailException

from conftest import REPO
from helical_lib import registry
from helical_lib.plan import NO_MODEL, annotation_plan
from helical_lib.settings import Settings

sys.path.insert(0, str(REPO / "tests"))
from mlflow_server import MlflowServer, _free_port  # noqa: E402

PLAN = {"run_id": "r1", "run": "s3://helical/runs/r1", "data": "s3://helical/incoming/annotate/a.h5ad"}
DEFAULTS = {"registered_model": registry.DEFAULT_NAME, "model_alias_or_version": registry.CHAMPION}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    """One tracking server for the module (it takes tens of seconds to start), SQLite backend, moto's S3."""
    work = tmp_path_factory.mktemp("mlflow")
    port = _free_port("127.0.0.1")
    moto = subprocess.Popen([str(REPO / ".venv-airflow/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = MlflowServer(work=work, s3_url=f"http://127.0.0.1:{port}")
    try:
        yield server.start()
    finally:
        server.stop()
        moto.terminate()
        moto.wait(timeout=30)


@pytest.fixture
def registered(mlflow):
    """Make registered models with versions and aliases (as finetune --register does); deleted afterwards."""
    names = []

    def make(name: str, versions: int, **aliases: int) -> None:
        mlflow.post("registered-models/create", {"name": name})
        names.append(name)
        for n in range(versions):
            mlflow.post("model-versions/create", {"name": name, "source": f"s3://helical/runs/r{n}/model"})
        for alias, version in aliases.items():
            mlflow.post("registered-models/alias", {"name": name, "alias": alias, "version": str(version)})

    yield make
    for name in names:
        httpx.request("DELETE", f"{mlflow.uri}/api/2.0/mlflow/registered-models/delete", json={"name": name},
                      timeout=30).raise_for_status()


def settings(uri: str) -> Settings:
    return Settings.from_env({"MLFLOW_TRACKING_URI": uri, "HELICAL_DATA_DIR": "/nonexistent"})


def test_the_champion_alias_is_pinned_to_its_version(mlflow, registered):
    registered(registry.DEFAULT_NAME, 3, champion=2, candidate=3)
    plan = annotation_plan(PLAN, DEFAULTS, settings(mlflow.uri))
    assert plan["model_uri"] == f"models:/{registry.DEFAULT_NAME}/2"  # the version, not the alias: pinned
    assert plan["embeddings"] == "s3://helical/runs/r1/embed/embeddings.h5ad"
    named = {"registered_model": registry.DEFAULT_NAME}
    assert annotation_plan(PLAN, {**named, "model_alias_or_version": "candidate"},
                           settings(mlflow.uri))["model_uri"] == f"models:/{registry.DEFAULT_NAME}/3"
    assert annotation_plan(PLAN, {**named, "model_alias_or_version": "1"},
                           settings(mlflow.uri))["model_uri"] == f"models:/{registry.DEFAULT_NAME}/1"


def test_no_default_champion_yet_means_embeddings_only(mlflow, registered, capsys):
    assert annotation_plan(PLAN, DEFAULTS, settings(mlflow.uri))["model_uri"] is None  # no such model
    registered(registry.DEFAULT_NAME, 1)  # a model, but no champion
    assert annotation_plan(PLAN, DEFAULTS, settings(mlflow.uri))["model_uri"] is None
    assert annotation_plan(PLAN, {}, settings(mlflow.uri))["model_uri"] is None  # conf without the fields
    assert NO_MODEL in capsys.readouterr().out
    # no registry configured at all: the same
    assert annotation_plan(PLAN, DEFAULTS, settings(""))["model_uri"] is None


@pytest.mark.parametrize("params,named", [
    ({"registered_model": "helical-donor", "model_alias_or_version": "champion"}, "models:/helical-donor@champion"),
    ({"registered_model": registry.DEFAULT_NAME, "model_alias_or_version": "staging"},
     f"models:/{registry.DEFAULT_NAME}@staging"),
    ({"registered_model": registry.DEFAULT_NAME, "model_alias_or_version": "7"}, f"models:/{registry.DEFAULT_NAME}/7"),
])
def test_a_named_model_that_does_not_resolve_fails_in_one_line(mlflow, registered, params, named):
    registered(registry.DEFAULT_NAME, 1, champion=1)
    with pytest.raises(registry.ModelNotFound) as info:
        annotation_plan(PLAN, params, settings(mlflow.uri))
    assert isinstance(info.value, AirflowFailException)  # no retries
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{named} not found in MLflow's registry at {mlflow.uri}")
    with pytest.raises(registry.ModelNotFound, match="MLFLOW_TRACKING_URI is not set"):
        annotation_plan(PLAN, params, settings(""))


def test_an_unreachable_or_failing_mlflow_is_retried(monkeypatch):
    """Nothing listens on the port: a plain exception, which Airflow retries (check_input has retries)."""
    down = f"http://127.0.0.1:{_free_port('127.0.0.1')}"
    for params in (DEFAULTS, {"registered_model": "helical-donor", "model_alias_or_version": "3"}):
        with pytest.raises(RuntimeError, match=f"MLflow at {down} unreachable") as info:
            annotation_plan(PLAN, params, settings(down))
        assert not isinstance(info.value, AirflowFailException)
    monkeypatch.setattr(httpx, "get", lambda url, **kw: httpx.Response(503, text="upstream down"))
    with pytest.raises(RuntimeError, match="answered 503"):
        annotation_plan(PLAN, DEFAULTS, settings(down))
    monkeypatch.setattr(httpx, "get", lambda url, **kw: httpx.Response(403, json={"error_code": "PERMISSION_DENIED"}))
    with pytest.raises(AirflowFailException, match="refused"):
        annotation_plan(PLAN, DEFAULTS, settings(down))


def test_version_pages_in_the_ui():
    assert registry.version_page("http://mlflow.example/", "models:/helical-cell_type/4") == \
        "http://mlflow.example/#/models/helical-cell_type/versions/4"
    assert registry.version_page("", "models:/m/4") is None
    assert registry.version_page("http://ui", None) is None
    assert registry.version_page("http://ui", "models:/m@champion") is None
