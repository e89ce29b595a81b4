"""Static checks of the Dockerfiles and docker-compose-build.yaml (no engine needed). The Airflow image's
official-base path can't be built here (apache/airflow can't be pulled; tests/stack builds it on the local
base), so its Dockerfile is checked for what matters: it parses, defaults to the pinned official base, and
installs pinned requirements on the same pip line as Airflow, as the airflow user."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO

RUNNER = REPO / "docker/Dockerfile.runner"
AIRFLOW = REPO / "docker/Dockerfile.airflow"
AIRFLOW_REQS = REPO / "docker/airflow/requirements.txt"
INSTRUCTIONS = {"FROM", "ARG", "RUN", "COPY", "ADD", "ENV", "LABEL", "USER", "WORKDIR", "ENTRYPOINT", "CMD",
                "EXPOSE", "VOLUME", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped; fails on unknown ones."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        pending += " " + line.rstrip("\\").strip() if pending else line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        assert keyword.upper() in INSTRUCTIONS, f"{path.name}: unknown instruction {keyword!r}"
        out.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def stages(path) -> dict[str, list[tuple[str, str]]]:
    result, current = {}, None
    for keyword, args in instructions(path):
        if keyword == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else str(len(result))
            result[current] = []
        elif current is not None:
            result[current].append((keyword, args))
    return result


def pin_of(requirement: str) -> tuple[str, str]:
    name, _, version = requirement.partition("==")
    return re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-"), version.strip()


def test_runner_dockerfile_has_cpu_then_gpu_for_the_legacy_builder():
    found = stages(RUNNER)
    # the legacy builder builds every stage up to the target: cpu must not need the CUDA base
    assert list(found) == ["cpu", "gpu"]
    assert not [a for k, a in instructions(RUNNER) if k == "RUN" and "--mount" in a]  # BuildKit-only
    for name, body in found.items():
        keywords = dict(body)
        assert keywords["USER"] == "50000:0", name
        assert keywords["ENTRYPOINT"] == '["helical-runner"]' and keywords["CMD"] == '["info"]', name
        assert "CACHE_DIR_HELICAL_PREFIX=/data/helical" in keywords["ENV"]
        assert "HELICAL_SCRATCH=/data/scratch" in keywords["ENV"]
        assert "HELICAL_PROFILES=/opt/helical/profiles.yaml" in keywords["ENV"]
        args = {a.split("=")[0] for k, a in body if k == "ARG"}
        assert {"PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_EXTRA_ARGS", "TORCH_INDEX_URL"} <= args
        copies = " ".join(a for k, a in body if k == "COPY")
        assert "requirements/runner.lock" in copies and "config/profiles.yaml" in copies
        # the user switch comes after every RUN: nothing after it runs as root, nothing before as 50000
        order = [k for k, _ in body]
        assert "RUN" not in order[order.index("USER"):]
    assert "python:3.12-slim-bookworm" in RUNNER.read_text()
    assert re.search(r"GPU_BASE_IMAGE=nvidia/cuda:12\.\d+\.\d+-", RUNNER.read_text())


def test_airflow_dockerfile_pins_airflow_and_its_requirements_together():
    body = instructions(AIRFLOW)
    assert [a for k, a in body if k == "FROM"] == ["${BASE_IMAGE}"]
    pre_from = [a for k, a in body[:[k for k, _ in body].index("FROM")] if k == "ARG"]
    # the default base is the official image of the pinned Airflow
    assert "BASE_IMAGE=apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in pre_from
    assert "AIRFLOW_VERSION=3.3.2" in pre_from
    install = (REPO / "docker/airflow/install.sh").read_text()
    # on the official image: as the airflow user (its pip refuses root), Airflow pinned on the same line
    assert re.search(r'runuser -u airflow -- pip install "apache-airflow==\$\{version\}" -r "\$files/requirements.txt"',
                     install)
    # on a plain Python base: exactly the lock the Airflow tests run on
    assert re.search(r'pip install -q -r "\$files/airflow.lock"', install)
    assert body[-2:] == [("USER", "50000:0"), ("ENTRYPOINT", '["/usr/bin/dumb-init", "--", "/entrypoint"]')]


def test_airflow_requirements_are_pinned_like_the_tested_lock_and_exclude_the_runner():
    requirements = [line.strip() for line in AIRFLOW_REQS.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    lock = dict(pin_of(line) for line in (REPO / "requirements/airflow.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    names = set()
    for requirement in requirements:
        assert "==" in requirement, f"{requirement} is not pinned"
        name, version = pin_of(requirement)
        names.add(name)
        assert lock.get(name) == version, f"{name}=={version} but requirements/airflow.lock has {lock.get(name)}"
    assert {"apache-airflow-providers-docker", "apache-airflow-providers-amazon"} <= names
    assert not {"torch", "helical", "helical-airflow"} & names
    assert "[aiobotocore]" in AIRFLOW_REQS.read_text()  # deferrable S3 sensors run on it


def test_compose_build_file_builds_the_three_images_from_these_dockerfiles():
    compose = yaml.safe_load((REPO / "docker-compose-build.yaml").read_text())
    services = compose["services"]
    expected = {"runner-cpu": ("docker/Dockerfile.runner", "cpu", "helical-runner:cpu"),
                "runner-gpu": ("docker/Dockerfile.runner", "gpu", "helical-runner:gpu"),
                "airflow": ("docker/Dockerfile.airflow", None, "${AIRFLOW_IMAGE_NAME:-helical-airflow:3.3.2}")}
    for name, (dockerfile, target, image) in expected.items():
        spec = services[name]
        assert spec["build"]["dockerfile"] == dockerfile and (REPO / dockerfile).is_file()
        assert spec["build"].get("target") == target and spec["image"] == image
    assert services["runner-gpu"]["profiles"] == ["gpu"]
    # the images the resource profiles name are the ones this file builds
    profiles = yaml.safe_load((REPO / "config/profiles.yaml").read_text())["profiles"]
    assert {p["image"] for p in profiles.values()} <= {s["image"] for s in services.values()}


@pytest.mark.parametrize("script", ["docker-engine.sh", "docker-base-image.sh", "build-runner-image.sh",
                                    "socket-proxy.sh", "suite-docker.sh", "build-local-images.sh", "stack.sh",
                                    "suite-stack.sh"])
def test_scripts_parse(script):
    import subprocess

    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / script)]).returncode == 0
