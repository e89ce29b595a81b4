"""MLflow's model registry, read over its REST API with httpx (the Airflow image has no mlflow package):
which version a registered model's alias or version number names, pinned as `models:/NAME/VERSION` for a run.

    GET {tracking}/api/2.0/mlflow/registered-models/alias?name=N&alias=A   -> {"model_version": {"version": ...}}
    GET {tracking}/api/2.0/mlflow/model-versions/get?name=N&version=V      -> {"model_version": {...}}

A model or alias that doesn't exist answers 404 RESOURCE_DOES_NOT_EXIST (no such model or version) or 400
INVALID_PARAMETER_VALUE (the model exists, the alias doesn't); both mean "not there" here (see
tests/airflow/test_registry.py, against a real server).
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

API = "api/2.0/mlflow"
DEFAULT_NAME = "helical-cell_type"  # what helical_finetune registers a model trained on cell_type as (runner default)
CHAMPION = "champion"  # the alias `helical-runner finetune --promote` moves
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # as helical_runner.tracking.registry.NAME_PATTERN, at most 200
NOT_THERE = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
TIMEOUT_SECONDS = 20


class ModelNotFound(AirflowFailException):
    """A registered model the user named doesn't resolve: fail at once, a retry would find nothing either."""


def find_version(tracking_uri: str, name: str, alias_or_version: str) -> str | None:
    """The version number `alias_or_version` (an alias such as `champion`, or a version number) names in
    registered model `name`, or None when the model, the alias or the version doesn't exist.

    Raises RuntimeError (retried by Airflow) when the server can't be reached or answers 5xx/429, and
    AirflowFailException for any other refusal (e.g. 401/403: a retry would be refused alike)."""
    import httpx

    if alias_or_version.isdigit():
        path, query = "model-versions/get", {"name": name, "version": alias_or_version}
    else:
        path, query = "registered-models/alias", {"name": name, "alias": alias_or_version}
    url = f"{tracking_uri.rstrip('/')}/{API}/{path}"
    try:
        response = httpx.get(url, params=query, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"MLflow at {tracking_uri} unreachable ({type(exc).__name__}: {exc}); "
                           "retrying") from None
    if response.status_code == 200:
        return str(response.json()["model_version"]["version"])
    if response.status_code >= 500 or response.status_code == 429:
        raise RuntimeError(f"MLflow at {tracking_uri} answered {response.status_code} to GET {path}; retrying")
    if _error_code(response) in NOT_THERE:
        return None
    raise AirflowFailException(f"MLflow at {tracking_uri} refused GET {path} for {name}: "
                               f"{response.status_code} {response.text[:200]}")


def resolve(tracking_uri: str, name: str, alias_or_version: str, required: bool) -> str | None:
    """`models:/NAME/VERSION` for the version the alias or number names today (so a run keeps using it
    when the alias moves); None when it doesn't exist and isn't `required`, ModelNotFound when it is."""
    where = f"models:/{name}{'/' if alias_or_version.isdigit() else '@'}{alias_or_version}"
    if not tracking_uri:
        if required:
            raise ModelNotFound(f"{where} can't be looked up: MLFLOW_TRACKING_URI is not set (no model registry)")
        return None
    version = find_version(tracking_uri, name, alias_or_version)
    if version is None:
        if required:
            raise ModelNotFound(f"{where} not found in MLflow's registry at {tracking_uri}: no such registered "
                                "model, alias or version")
        return None
    return f"models:/{name}/{version}"


def _error_code(response) -> str:
    try:
        return str(response.json().get("error_code", ""))
    except ValueError:
        return ""


def version_page(ui_url: str, model_uri: str | None) -> str | None:
    """The MLflow UI's page of the version `models:/NAME/VERSION` names; None without a UI or a version."""
    if not (ui_url and model_uri and model_uri.startswith("models:/")):
        return None
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    return f"{ui_url.rstrip('/')}/#/models/{name}/versions/{version}" if name and version.isdigit() else None
