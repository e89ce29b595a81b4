"""The stack refuses to start on a placeholder secret: airflow-init (Airflow), storage-secrets (MinIO) and
monitoring-secrets (Grafana) run docker/check-secrets.sh first, which names each secret still empty or
`<...>` and says how to make one. No Docker Hub images can be pulled here, so the compose stack itself
can't start: the script (under dash, the plain sh of the slim images) and its wiring are what is tested."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "check-secrets.sh"


def template_placeholders() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env-template").read_text().splitlines():
        match = re.match(r"^([A-Z_][A-Z0-9_]*)=(<.*>)$", line)
        if match and match.group(1) != "HELICAL_DATA_DIR":  # a path, checked by airflow-init itself
            values[match.group(1)] = match.group(2)
    return values


def check(env: dict, names) -> subprocess.CompletedProcess:
    return subprocess.run(["dash", str(SCRIPT), *names], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True)


def test_airflow_init_checks_every_secret_of_the_template_first():
    init = yaml.safe_load((REPO / "docker-compose-airflow.yaml").read_text())["services"]["airflow-init"]
    script = init["command"][-1]
    first_step = [line for line in script.splitlines() if line.strip() and "set -euo" not in line][0]
    assert first_step.strip().startswith("sh /opt/helical/check-secrets.sh ")
    checked = set(first_step.split()[2:])
    assert set(template_placeholders()) <= checked
    for name in checked:  # each reaches the init container under its .env name
        assert name in init["environment"] or name in str(init["environment"])
    assert any(str(v).startswith("./docker/check-secrets.sh:") for v in init["volumes"])


def test_placeholders_are_refused_one_line_each_with_how_to_make_them():
    placeholders = template_placeholders()
    result = check(placeholders, placeholders)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(placeholders)
    for name, line in zip(placeholders, lines):
        assert line.startswith(f"error: set {name} in .env (it is still the placeholder <") and "make one with: " in line
    fernet = next(line for line in lines if "AIRFLOW_FERNET_KEY" in line)
    assert "Fernet.generate_key()" in fernet
    empty = check({}, ["GRAFANA_ADMIN_PASSWORD"])
    assert empty.returncode == 1 and "(it is empty)" in empty.stderr


def test_real_secrets_pass_and_the_suggested_fernet_command_makes_a_valid_key():
    placeholders = template_placeholders()
    fernet_line = check({"AIRFLOW_FERNET_KEY": ""}, ["AIRFLOW_FERNET_KEY"]).stderr.split("make one with: ", 1)[1].strip()
    code = fernet_line.split('"', 1)[1].rsplit('"', 1)[0]  # the python -c program it suggests
    key = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    from cryptography.fernet import Fernet

    Fernet(key.encode())  # raises if the suggested command made an invalid key
    filled = {name: "s3cret-value-123" for name in placeholders} | {"AIRFLOW_FERNET_KEY": key}
    result = check(filled, placeholders)
    assert result.returncode == 0 and result.stderr == ""


def compose(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())["services"]


def secrets_used(service: dict) -> set[str]:
    """Template secrets a service reads: the variables its environment interpolates."""
    text = str(service.get("environment", ""))
    return {name for name in template_placeholders() if f"${{{name}:" in text or f"${{{name}}}" in text}


@pytest.mark.parametrize("file, checker_name, guarded", [
    ("docker-compose-storage.yaml", "storage-secrets", ["minio", "minio-init"]),
    ("docker-compose-monitoring.yaml", "monitoring-secrets", ["grafana"]),
])
def test_storage_and_monitoring_check_their_secrets_without_the_airflow_file(file, checker_name, guarded):
    """Started alone (without docker-compose-airflow.yaml), MinIO and Grafana still never run on a
    placeholder: a one-shot check of exactly their secrets runs first and they wait for its success."""
    services = compose(file)
    checker = services[checker_name]
    assert checker["entrypoint"] == ["/bin/sh", "/opt/helical/check-secrets.sh"]
    assert "./docker/check-secrets.sh:/opt/helical/check-secrets.sh:ro" in checker["volumes"]
    assert checker["user"] != "0" and not str(checker["user"]).startswith("0:")
    used = set().union(*(secrets_used(services[name]) for name in guarded))
    assert used and used <= set(checker["command"]) <= set(checker["environment"])

    def waits_for_check(name: str, seen=()) -> bool:
        depends = services[name].get("depends_on") or {}
        if depends.get(checker_name, {}).get("condition") == "service_completed_successfully":
            return True
        return any(waits_for_check(dep, (*seen, name)) for dep in depends if dep in services and dep not in seen)

    assert all(waits_for_check(name) for name in guarded)
    # the checker refuses the template's placeholders for exactly those names
    placeholders = template_placeholders()
    result = check({n: placeholders[n] for n in checker["command"]}, checker["command"])
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == len(checker["command"])
