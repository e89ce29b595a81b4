"""The runner image built from docker/Dockerfile.runner: it runs `helical-runner` as a non-root user with
the data folder mounted at /data, prints the model's metadata by default, and fails a bad call with the
runner's exit code and one error line."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import MODEL

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def run(image: str, *args: str, data=None, entrypoint: str | None = None, timeout: int = 300, env: dict | None = None):
    cmd = ["docker", "run", "--rm", "--network", "none"]
    for name, value in (env or {}).items():
        cmd += ["-e", f"{name}={value}"]
    if data is not None:
        cmd += ["-v", f"{data}:/data"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)


def test_image_builds_from_the_dockerfile(docker_client, runner_image):
    config = docker_client.images.get(runner_image).attrs["Config"]
    assert config["Entrypoint"] == ["helical-runner"] and config["Cmd"] == ["info"]
    assert config["User"] == "50000:0"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CACHE_DIR_HELICAL_PREFIX"] == "/data/helical"
    assert env["HELICAL_SCRATCH"] == "/data/scratch"
    assert env["HELICAL_PROFILES"] == "/opt/helical/profiles.yaml"
    assert config["Labels"]["org.opencontainers.image.title"] == "helical-runner"
    assert config["Labels"]["io.helical-airflow.build-hash"]


def test_rebuild_without_changes_is_skipped(runner_image, docker_socket):
    import os
    from conftest import REPO

    out = subprocess.run(["bash", str(REPO / "scripts/build-runner-image.sh"), "cpu"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "DOCKER_HOST": f"unix://{docker_socket}"})
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stderr


def test_default_command_lists_the_models_as_a_non_root_user(runner_image, data_dir):
    """`info` (the image's CMD) lists every model and whether the image's cache holds it; `info --model`
    describes one."""
    result = run(runner_image, data=data_dir)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    rows = {row["name"]: row for row in listing["models"]}
    assert rows[MODEL]["cached"] and rows[MODEL]["embedding_size"] == 64
    assert all(path.startswith("/data/helical/") for row in rows.values() for path in row["missing"])
    assert listing["device"] == "cpu" and listing["cuda_available"] is False
    result = run(runner_image, "info", "--model", MODEL, data=data_dir)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == MODEL and info["family"] == "geneformer"
    [tokens] = data_dir.glob("helical/**/token_dictionary.json")  # the stand-in's real-gene vocabulary
    assert info["layers"] == 2 and info["hidden_size"] == 64 and info["vocabulary_size"] == len(json.loads(tokens.read_text()))
    assert info["model_dir"].startswith("/data/helical/")
    assert info["device"] == "cpu" and info["cuda_available"] is False
    assert info["versions"]["helical"] == "3.1.4"

    who = run(runner_image, "-c", "import os; print(os.getuid(), os.getgid(), os.environ['HOME'])",
              entrypoint="python")
    assert who.returncode == 0, who.stderr
    uid, gid, home = who.stdout.split()
    assert (uid, gid, home) == ("50000", "0", "/home/runner")


def test_bad_input_exits_65_with_one_error_line(runner_image, data_dir):
    result = run(runner_image, "chunk", "--input", "/data/missing.h5ad", "--output", "/data/out", data=data_dir)
    assert result.returncode == 65, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("helical-runner: error:")]
    assert len(errors) == 1, result.stderr
    assert "missing.h5ad" in errors[0]
    assert "Traceback" not in result.stderr


def test_umap_comes_compiled_with_the_image(runner_image):
    """predict's umap.png needs umap-learn, whose import compiled ~10 s of numba code in every container
    until the image kept numba's cache: now the import loads it and compiles nothing worth saving."""
    result = run(runner_image, "-c", "import umap", entrypoint="python", env={"NUMBA_DEBUG_CACHE": "1"})
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    loaded = [line for line in lines if line.startswith("[cache] data loaded from '/opt/numba-cache/")]
    saved = [line for line in lines if line.startswith("[cache] data saved to")]
    assert loaded and not saved, "\n".join(lines[-20:])


def test_docker_stop_ends_a_step_at_once_with_143(runner_image):
    """`docker stop` sends SIGTERM to the container's PID 1, the runner itself. A step waiting on S3 (here
    an endpoint it can't reach, retried for 10 minutes) ends at once with 143 and one line saying so, not
    after the stop's whole grace period with Docker's SIGKILL (137) while it kept working."""
    import time

    started = subprocess.run(
        ["docker", "run", "-d", "--network", "none", "-e", "S3_ENDPOINT_URL=http://192.0.2.1:9000",
         "-e", "AWS_ACCESS_KEY_ID=test", "-e", "AWS_SECRET_ACCESS_KEY=test", "-e", "S3_RETRY_SECONDS=600",
         runner_image, "inspect", "--data", "s3://helical/incoming/cells.h5ad"],
        capture_output=True, text=True, timeout=60, check=True)
    container = started.stdout.strip()
    try:
        deadline = time.monotonic() + 120
        logs = ""
        while "S3 unreachable while" not in logs and time.monotonic() < deadline:
            time.sleep(1)
            done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
            logs = done.stdout + done.stderr
        assert "S3 unreachable while" in logs, logs[-2000:]  # the step is under way, retrying S3
        subprocess.run(["docker", "stop", "--time", "120", container], capture_output=True, timeout=300, check=True)
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", container], capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()
        done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
        assert code == "143", (code, (done.stdout + done.stderr)[-2000:])
        assert "helical-runner: stopped by SIGTERM" in done.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
