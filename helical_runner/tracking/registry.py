"""MLflow's model registry: fine-tuned models as versions of a registered model, the `champion` alias, and
`models:/NAME@ALIAS` / `models:/NAME/VERSION` URLs resolved to a model folder.

Models are addressed by registry URI, never by a path copied between systems; promotion is an alias move,
recorded with its reason (a tag `promotion` on the version, and in report.json).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from helical_runner.errors import InputError, UnavailableError

log = logging.getLogger(__name__)

CHAMPION = "champion"
PROMOTE_CHOICES = ("auto", "always", "never")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>[0-9]+))$")


def is_registry_uri(url: str) -> bool:
    return url.startswith("models:/")


def default_name(label_column: str) -> str:
    """helical-<label column>, cleaned to the characters a registered model name keeps here."""
    return "helical-" + (re.sub(r"[^A-Za-z0-9_.\-]+", "_", label_column).strip("_") or "labels")[:180]


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InputError(f"registered model name '{name}' is not valid: letters, digits, '-', '_' and '.', "
                         "starting with a letter or digit, at most 200 characters")
    return name


def parse_uri(url: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` -> (NAME, ALIAS, None); `models:/NAME/VERSION` -> (NAME, None, VERSION).
    Raises InputError for any other shape."""
    found = _URI.match(url)
    if not found:
        raise InputError(f"model URL '{url}' is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return found["name"], found["alias"], found["version"]


def register(client, name: str, run_id: str, artifact_path: str, tags: dict, macro_f1: float | None,
             promote: str) -> dict:
    """Register run `run_id`'s `artifact_path` folder as a version of `name` (created if new), tagged with
    `tags` and macro_f1, then apply the promotion rule (promote: auto | always | never):

    auto moves alias `champion` to the new version when the model has no champion yet, or when the new
    macro-F1 beats the champion's (its `macro_f1` tag) strictly; always moves it; never leaves it.
    A retry of the same run reuses the version it registered (no second version). Returns {"name",
    "version", "uri", "champion", "reason"}."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    try:
        client.create_registered_model(name, description="Cell-type classifiers fine-tuned by helical-runner")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    all_tags = {**{k: str(v) for k, v in tags.items() if v is not None},
                **({"macro_f1": f"{macro_f1:.6f}"} if macro_f1 is not None else {})}
    if existing:
        version = existing[0]
    else:
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = client.create_model_version(name, source, run_id=run_id, tags=all_tags,
                                              description=f"fine-tuned by helical-runner ({tags.get('airflow.run_id') or run_id})")
    number = str(version.version)
    promoted, reason = _promotion(client, name, number, macro_f1, promote)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, number)
    client.set_model_version_tag(name, number, "promotion", reason)
    log.info("registered %s version %s (models:/%s/%s): %s", name, number, name, number, reason)
    return {"name": name, "version": number, "uri": f"models:/{name}/{number}", "champion": promoted,
            "reason": reason}


def _promotion(client, name: str, version: str, macro_f1: float | None, promote: str) -> tuple[bool, str]:
    if promote not in PROMOTE_CHOICES:
        raise InputError(f"--promote must be one of {', '.join(PROMOTE_CHOICES)}, not '{promote}'")
    current = _champion(client, name)
    if current is not None and str(current.version) == version:
        return True, f"champion: version {version} already holds alias {CHAMPION}"
    if promote == "never":
        return False, "not promoted (promote=never)"
    if promote == "always":
        return True, "champion: promoted on request (promote=always)"
    if current is None:
        return True, f"champion: the first version with a macro-F1 ({_f1(macro_f1)}); {name} had no champion"
    theirs = current.tags.get("macro_f1")
    if theirs is None:
        return True, f"champion: version {current.version}, the champion, records no macro-F1"
    if macro_f1 is not None and macro_f1 > float(theirs):
        return True, (f"champion: macro-F1 {_f1(macro_f1)} beats champion version {current.version}'s "
                      f"{float(theirs):.4f}")
    return False, (f"not promoted: macro-F1 {_f1(macro_f1)} does not beat champion version {current.version}'s "
                   f"{float(theirs):.4f}")


def _f1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def download(url: str, dest: Path) -> tuple[Path, dict]:
    """A local copy of the model folder a `models:/` URL names, through the tracking server; returns
    (folder, {"uri", "name", "version", "run_id", "alias"}). Raises InputError when the URL is malformed,
    MLFLOW_TRACKING_URI is unset, or the model, version or alias doesn't exist; UnavailableError when the
    server can't be reached."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_uri(url)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise InputError(f"{url}: a models:/ URL is resolved by MLflow's registry; set MLFLOW_TRACKING_URI")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except RestException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise InputError(f"{url}: {_missing(client, name, alias, version)}") from None
        raise UnavailableError(f"{url}: MLflow at {uri} failed: {str(exc).splitlines()[0]}") from None
    except MlflowException as exc:
        raise UnavailableError(f"{url}: MLflow at {uri} did not answer: {str(exc).splitlines()[0][:200]}") from None
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{found.version}",
                                                    dst_path=str(dest), tracking_uri=uri)
    except MlflowException as exc:
        raise UnavailableError(f"{url}: could not download version {found.version} from MLflow at {uri}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
    info = {"uri": url, "name": name, "version": str(found.version), "run_id": found.run_id, "alias": alias}
    log.info("%s is version %s of %s (MLflow run %s)", url, found.version, name, found.run_id)
    return Path(local), info


def _missing(client, name: str, alias: str | None, version: str | None) -> str:
    """Why a registry lookup found nothing, naming what does exist."""
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except Exception:  # noqa: BLE001 - the message is best effort
        versions = []
    if not versions:
        return f"no registered model '{name}' (or it has no versions yet)"
    what = f"alias '{alias}'" if alias else f"version {version}"
    return f"registered model '{name}' has no {what} (versions: {', '.join(map(str, versions))})"
