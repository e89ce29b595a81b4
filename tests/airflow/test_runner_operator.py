"""Profile -> DockerOperator arguments, runner commands, and how RunnerOperator treats containers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowFailException

from helical_lib import profiles
from helical_lib.runner import (RunnerOperator, _HardenedClient, container_kwargs, runner_command,
                                runner_error, step_failure, stop_earlier_attempts)
from helical_lib.settings import Settings

SETTINGS = Settings.from_env({"HELICAL_DATA_DIR": "/srv/helical/data", "DOCKER_HOST": "tcp://proxy:2375",
                              "HELICAL_RUNNER_NETWORK": "helical-runners", "PUSHGATEWAY_URL": "http://pgw:9091"})
S3_ENV = {"S3_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}
IDS = {"dag_id": "helical_finetune", "task_id": "on_cpu.chunk", "run_id": "manual__2026-11-23T10-00-00",
       "try_number": 1}
PLAN = {"data": "s3://helical/incoming/atlas.h5ad", "etag": "abc", "size": 10, "run_id": "run-1",
        "profile": "cpu-small", "queue": "cpu", "chunks": "s3://helical/chunks/atlas-abc",
        "run": "s3://helical/runs/run-1", "label_column": "cell_type", "model": "gf-12L-38M-i4096",
        "epochs": None, "precision": None, "batch_size": None, "tokens_per_batch": None, "lr": None,
        "cells_per_chunk": None, "model_uri": "s3://helical/runs/run-1/model"}


def kwargs_for(profile_name: str, settings: Settings = SETTINGS) -> dict:
    return container_kwargs(profiles.get(profile_name), settings, s3_env=S3_ENV, **IDS)


def test_cpu_profile_maps_to_container_arguments():
    kw = kwargs_for("cpu-small")
    assert kw["image"] == "helical-runner:cpu"
    assert kw["mem_limit"] == "8g"
    assert kw["device_requests"] is None
    # inputs in the data folder are read-only; only scratch space and the model cache are writable
    assert [(m["Target"], m["Source"], m["Type"], m["ReadOnly"]) for m in kw["mounts"]] == [
        ("/data", "/srv/helical/data", "bind", True), ("/data/scratch", "/srv/helical/data/scratch", "bind", False),
        ("/data/helical", "/srv/helical/data/helical", "bind", False)]
    assert kw["docker_url"] == "tcp://proxy:2375"
    assert kw["network_mode"] == "helical-runners"
    assert kw["mount_tmp_dir"] is False and kw["auto_remove"] == "never"
    assert kw["user"] == "50000:0"
    assert kw["labels"] == {"app": "helical-runner", "dag_id": "helical_finetune", "task_id": "on_cpu.chunk",
                            "run_id": IDS["run_id"], "try_number": "1", "profile": "cpu-small"}


def test_a_worker_hosts_name_labels_its_runner_containers_and_their_metrics():
    """On a worker host (HELICAL_WORKER_NAME, docker-compose-worker.yaml) the container says where it ran, for
    cAdvisor's series and `docker ps`, and the runner puts the same name on its Pushgateway metrics."""
    from dataclasses import replace

    kw = kwargs_for("cpu-small", replace(SETTINGS, host="gpu-a100-1"))
    assert kw["labels"]["host"] == "gpu-a100-1" and kw["environment"]["HELICAL_HOST"] == "gpu-a100-1"
    assert Settings.from_env({"HELICAL_WORKER_NAME": "gpu-a100-1"}).host == "gpu-a100-1"


def test_environment_keeps_secrets_private():
    kw = kwargs_for("cpu-small")
    assert kw["environment"] == {
        "HELICAL_RUN_ID": IDS["run_id"], "HELICAL_DAG_ID": "helical_finetune", "HELICAL_TASK_ID": "on_cpu.chunk",
        "HELICAL_TRY_NUMBER": "1", "HELICAL_ATTEMPT": kw["container_name"], "HELICAL_SCRATCH": "/data/scratch", "CACHE_DIR_HELICAL_PREFIX": "/data/helical",
        "S3_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "us-east-1",
        "PUSHGATEWAY_URL": "http://pgw:9091"}
    # private_environment is neither templated nor shown in the UI's rendered fields
    assert kw["private_environment"] == {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}


def test_runners_can_read_the_deployments_profiles_file():
    """A profile added to the deployment's file after the image was built is known to runners too."""
    assert "HELICAL_PROFILES" not in kwargs_for("cpu-small")["environment"]  # the image's own copy
    settings = Settings.from_env({"HELICAL_DATA_DIR": "/srv/d", "HELICAL_RUNNER_PROFILES": "/data/profiles.yaml"})
    assert kwargs_for("cpu-small", settings)["environment"]["HELICAL_PROFILES"] == "/data/profiles.yaml"


@pytest.mark.parametrize("name,gpus,memory", [("gpu-16gb", 1, "32g"), ("gpu-4x16gb", 4, "128g")])
def test_gpu_profiles_request_devices(name, gpus, memory):
    kw = kwargs_for(name)
    assert kw["image"] == "helical-runner:gpu"
    assert kw["mem_limit"] == memory
    [request] = kw["device_requests"]
    assert request["Count"] == gpus and request["Capabilities"] == [["gpu"]]
    assert kw["shm_size"] == 1024**3


def test_container_names_are_unique_and_valid():
    import re

    names = {kwargs_for("cpu-small")["container_name"] for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name) and len(name) < 128
        assert name.startswith("helical-on_cpu.chunk-manual__2026-11-23T10-00-00-t1-")


def test_missing_data_dir_fails_without_retry():
    with pytest.raises(AirflowFailException, match="HELICAL_DATA_DIR"):
        kwargs_for("cpu-small", Settings.from_env({}))


def test_extra_hosts_and_endpoint_override():
    settings = Settings.from_env({"HELICAL_DATA_DIR": "/d", "HELICAL_RUNNER_EXTRA_HOSTS": "minio:10.0.0.5"})
    assert kwargs_for("cpu-small", settings)["extra_hosts"] == {"minio": "10.0.0.5"}


def test_runner_commands_use_the_runner_flags():
    assert runner_command("inspect", PLAN) == [
        "inspect", "--data=s3://helical/incoming/atlas.h5ad", "--label-column=cell_type",
        "--output=s3://helical/runs/run-1", "--model=gf-12L-38M-i4096", "--run-id=run-1"]
    assert runner_command("chunk", PLAN) == [
        "chunk", "--input=s3://helical/incoming/atlas.h5ad", "--output=s3://helical/chunks/atlas-abc",
        "--profile=cpu-small", "--run-id=run-1"]
    assert runner_command("finetune", PLAN) == [
        "finetune", "--data=s3://helical/chunks/atlas-abc/manifest.json", "--label-column=cell_type",
        "--output=s3://helical/runs/run-1", "--model=gf-12L-38M-i4096", "--profile=cpu-small", "--run-id=run-1"]
    assert runner_command("predict", PLAN) == [
        "predict", "--model=s3://helical/runs/run-1/model", "--data=s3://helical/chunks/atlas-abc/manifest.json",
        "--output=s3://helical/runs/run-1/predict", "--profile=cpu-small", "--run-id=run-1"]
    tuned = {**PLAN, "epochs": 3, "precision": "fp16", "batch_size": 32, "tokens_per_batch": 16384, "lr": 0.001,
             "cells_per_chunk": 500}
    assert "--cells-per-chunk=500" in runner_command("chunk", tuned)
    chosen = {**PLAN, "counts": "layers/counts", "gene_column": "gene_ids"}
    for step in ("inspect", "chunk"):  # finetune and predict read the manifest, which records the choice
        command = runner_command(step, chosen)
        assert "--counts=layers/counts" in command and "--gene-column=gene_ids" in command
    finetune = runner_command("finetune", tuned)
    for flag in ("--epochs=3", "--precision=fp16", "--batch-size=32", "--tokens-per-batch=16384", "--lr=0.001"):
        assert flag in finetune
    assert "--no-embeddings" not in runner_command("predict", PLAN)
    assert runner_command("predict", {**PLAN, "no_embeddings": True})[-1] == "--no-embeddings"
    assert runner_command("embed", {**PLAN, "model": "scGPT_CP", "color": ["donor_id", "-x"]}) == [
        "embed", "--model=scGPT_CP", "--data=s3://helical/chunks/atlas-abc/manifest.json",
        "--output=s3://helical/runs/run-1/embed", "--profile=cpu-small", "--run-id=run-1", "--color=donor_id",
        "--color=-x"]
    with pytest.raises(ValueError):
        runner_command("train", PLAN)


@pytest.mark.parametrize("label", ["--output=s3://helical/incoming/x", "-h", "--label-column", "-x y", "-"])
def test_form_values_that_look_like_options_stay_values(label):
    """A label column (any form value) beginning with `-` reaches the runner's own parser as that value:
    parsed by the runner's argparse, not a usage error, and not another option (issue 20)."""
    import argparse

    command = runner_command("inspect", {**PLAN, "label_column": label})
    parser = argparse.ArgumentParser(exit_on_error=False)  # the runner's inspect flags, as it declares them
    for flag in ("--data", "--label-column", "--output", "--model", "--run-id"):
        parser.add_argument(flag)
    args = parser.parse_args(command[1:])
    assert args.label_column == label and args.output == "s3://helical/runs/run-1"


def test_runner_error_finds_the_one_line_reason():
    logs = [b"2026 INFO helical_runner: reading\n", "Traceback...\n",
            b"helical-runner: error: s3://helical/incoming/bad.h5ad is not an .h5ad file (HDF5 signature missing)\n"]
    assert runner_error(logs) == ("helical-runner: error: s3://helical/incoming/bad.h5ad is not an .h5ad file "
                                  "(HDF5 signature missing)")
    assert runner_error([]) == "" and runner_error(None) == ""


def test_hardened_client_drops_capabilities():
    calls = {}
    fake = SimpleNamespace(create_host_config=lambda **kw: calls.update(kw) or kw, images=lambda **kw: ["x"])
    client = _HardenedClient(fake)
    client.create_host_config(mem_limit="8g")
    assert calls == {"mem_limit": "8g", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
                     "pids_limit": 4096}
    assert client.images(name="x") == ["x"]


class FakeCli:
    def __init__(self, exit_code: int):
        self.exit_code, self.oom_killed, self.removed, self.host_configs = exit_code, False, [], []
        self.listed, self.filters, self.calls = [], [], []

    def containers(self, all=False, filters=None):  # noqa: A002 - docker-py's name
        self.filters.append(filters)
        return self.listed

    def stop(self, container_id, timeout=None):
        self.calls.append(("stop", container_id))

    def wait(self, container_id, timeout=None):
        self.calls.append(("wait", container_id))
        return {"StatusCode": 143}

    def inspect_container(self, container_id):
        return {"State": {"ExitCode": self.exit_code, "OOMKilled": self.oom_killed}}

    def remove_container(self, container_id, **kwargs):
        self.removed.append(container_id)

    def create_host_config(self, **kwargs):
        self.host_configs.append(kwargs)
        return kwargs


@pytest.fixture
def operator(monkeypatch, s3_conn):
    monkeypatch.setenv("HELICAL_DATA_DIR", "/srv/data")
    monkeypatch.setenv("HELICAL_RUNNER_NETWORK", "helical-runners")
    op = RunnerOperator(task_id="chunk", step="chunk", image="placeholder", queue="cpu")
    cli = FakeCli(0)
    monkeypatch.setattr(DockerOperator, "cli", property(lambda self: cli))
    ti = SimpleNamespace(xcom_pull=lambda task_ids: PLAN, try_number=2)
    op.fake_cli, op.context = cli, {"ti": ti}
    return op


def test_operator_configures_from_plan_and_connection(operator, monkeypatch):
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))
    operator.configure(operator.context)
    assert operator.image == "helical-runner:cpu" and operator.mem_limit == "8g"
    assert operator.network_mode == "helical-runners"
    assert operator.command[:2] == ["chunk", "--input=s3://helical/incoming/atlas.h5ad"]
    assert operator.environment["S3_ENDPOINT_URL"] == "http://s3.test:9000"
    assert operator.environment["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert "AWS_SECRET_ACCESS_KEY" not in operator.environment
    # the runners' own keys (write chunks/ and runs/ only), never Airflow's, which can touch incoming/
    assert operator._private_environment == {"AWS_ACCESS_KEY_ID": "runner-key",
                                             "AWS_SECRET_ACCESS_KEY": "runner-secret"}
    assert operator.labels["run_id"] == "run-1" and "-t2-" in operator.container_name
    # the exact input and ETag, which cleaned run ids and container names only stand for
    assert operator.labels["data"] == PLAN["data"] and operator.labels["etag"] == PLAN["etag"]
    operator.cli.create_host_config(mem_limit="8g")
    assert operator.fake_cli.host_configs[-1]["cap_drop"] == ["ALL"]


def test_operator_removes_container_only_after_success(operator, monkeypatch):
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))

    def succeed(self, context):
        self.container = {"Id": "c1"}

    monkeypatch.setattr(DockerOperator, "execute", succeed)
    operator.execute(operator.context)
    assert operator.fake_cli.removed == ["c1"]


def test_earlier_attempts_still_running_are_stopped_before_this_one_starts(operator, monkeypatch):
    """A lost worker leaves its container training: the retry stops it and waits until it has exited
    before it starts its own, so one container works on a step (issue 21)."""
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))
    started = []

    def run(self, context):
        started.append(list(self.cli.calls))
        self.container = {"Id": "c2"}

    monkeypatch.setattr(DockerOperator, "execute", run)
    cli = operator.fake_cli
    cli.listed = [{"Id": "c1", "Names": ["/helical-chunk-run-1-t1-aaaaaa"], "State": "running",
                   "Labels": {"try_number": "1"}},
                  {"Id": "c0", "Names": ["/helical-chunk-run-1-t0-bbbbbb"], "State": "exited", "Labels": {}}]
    operator.execute(operator.context)
    assert started == [[("stop", "c1"), ("wait", "c1")]]  # stopped and exited before the new one started
    assert cli.filters[0] == {"label": ["app=helical-runner", "dag_id=helical_finetune", "task_id=chunk",
                                        "run_id=run-1"]}
    # the task log says so, naming the container and its try
    lines = []
    log = SimpleNamespace(warning=lambda fmt, *args: lines.append(fmt % args))
    assert stop_earlier_attempts(cli, operator.labels, operator.container_name, log) == [
        "helical-chunk-run-1-t1-aaaaaa"]
    assert "helical-chunk-run-1-t1-aaaaaa (try 1) is still running: stopping it" in lines[0]
    assert "has exited (code 143)" in lines[1]


@pytest.mark.parametrize("code,exception", [(65, AirflowFailException), (69, RuntimeError), (70, RuntimeError)])
def test_operator_failure_keeps_container_and_retries_unless_bad_input(operator, monkeypatch, code, exception):
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))
    operator.fake_cli.exit_code = code

    def fail(self, context):
        self.container = {"Id": "c2"}
        raise DockerContainerFailedException("Docker container failed", logs=[
            b"helical-runner: error: input is not an .h5ad file\n"])

    monkeypatch.setattr(DockerOperator, "execute", fail)
    with pytest.raises(exception) as info:
        operator.execute(operator.context)
    assert type(info.value) is exception
    assert f"exit code {code}" in str(info.value)
    assert "helical-runner: error: input is not an .h5ad file" in str(info.value)
    assert operator.fake_cli.removed == []


def test_every_profile_queue_has_a_branch(dagbag):
    dag = dagbag.dags["helical_finetune"]
    for name, profile in profiles.load_all()[1].items():
        assert f"on_{profile['queue']}.finetune" in dag.task_ids, name


@pytest.mark.parametrize("exit_code", [0, 65, 69])
def test_local_mode_runs_the_same_cli_as_a_subprocess(operator, monkeypatch, tmp_path, exit_code):
    """HELICAL_RUNNER_MODE=local (no Docker engine): same command and environment, /data -> data folder."""
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))
    fake = tmp_path / "helical-runner"
    fake.write_text("#!/bin/sh\necho \"args: $*\"\necho \"scratch=$HELICAL_SCRATCH key=$AWS_SECRET_ACCESS_KEY\" "
                    f"> {tmp_path}/seen\n[ {exit_code} = 0 ] || echo 'helical-runner: error: bad cells' >&2\n"
                    f"exit {exit_code}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HELICAL_RUNNER_MODE", "local")
    monkeypatch.setenv("HELICAL_RUNNER_BIN", str(fake))
    if exit_code == 0:
        operator.execute(operator.context)
    else:
        with pytest.raises(AirflowFailException if exit_code == 65 else RuntimeError,
                           match="helical-runner: error: bad cells"):
            operator.execute(operator.context)
    assert (tmp_path / "seen").read_text() == "scratch=/srv/data/scratch key=runner-secret\n"
    assert operator.fake_cli.removed == []  # no container involved


def test_chunk_of_a_gpu_profile_runs_without_gpus_on_a_cpu_image(operator, monkeypatch):
    """chunk runs on queue cpu for every profile: a cpu worker's host may have no GPU and no GPU image."""
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))
    operator.context["ti"].xcom_pull = lambda task_ids: {**PLAN, "profile": "gpu-16gb", "queue": "gpu"}
    operator.configure(operator.context)
    assert operator.device_requests is None and operator.image == "helical-runner:cpu"
    assert operator.mem_limit == "32g" and operator.labels["profile"] == "gpu-16gb"
    finetune = RunnerOperator(task_id="finetune", step="finetune", image="placeholder", queue="gpu")
    finetune.configure(operator.context)
    assert finetune.image == "helical-runner:gpu" and finetune.device_requests[0]["Count"] == 1


@pytest.mark.parametrize("profile,cap,larger", [
    ("cpu-small", "8g", "cpu-large (memory_limit=32g)"), ("cpu-large", "32g", "gpu-80gb (memory_limit=96g)"),
    ("gpu-16gb", "32g", "gpu-80gb (memory_limit=96g)"), ("gpu-4x16gb", "128g", "no profile has a larger cap")])
def test_out_of_memory_fails_once_naming_the_cap_and_the_next_profile(profile, cap, larger):
    """A container the kernel killed at its memory cap would be killed again at the same cap: no retries."""
    error = step_failure("finetune", profiles.get(profile), 137, "Docker container failed", oom_killed=True)
    assert type(error) is AirflowFailException
    message = str(error)
    assert "\n" not in message and "out of memory" in message
    assert f"profile {profile}'s memory cap memory_limit={cap}" in message and larger in message


def test_of_larger_profiles_with_one_cap_the_one_on_the_same_queue_is_suggested(tmp_path):
    """cpu-small and cpu-remote (a worker host class) share a cap: a run on queue cpu that ran out of memory is
    pointed at cpu-small, one on cpu-remote at cpu-remote."""
    import yaml

    config = yaml.safe_load(profiles.profiles_path().read_text())
    for queue, expected in (("cpu", "cpu-small"), ("cpu-remote", "cpu-remote")):
        config["profiles"]["tiny-mem"] = {**config["profiles"]["cpu-small"], "memory_limit": "64m", "queue": queue}
        path = tmp_path / f"profiles-{queue}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert profiles.next_larger("tiny-mem", path)["name"] == expected, queue


@pytest.mark.parametrize("code,oom,exception", [
    (137, True, AirflowFailException),  # the kernel's OOM killer at the cap
    (137, False, RuntimeError),  # SIGKILL by a person, a worker lost: retried, resumes from the checkpoint
    (65, False, AirflowFailException), (69, False, RuntimeError), (1, False, RuntimeError),
    (2, False, AirflowFailException),
    (75, False, AirflowFailException)])  # superseded by a newer attempt (fencing): that one counts  # a usage error: the same arguments would be refused again
def test_failure_decision(code, oom, exception):
    error = step_failure("chunk", profiles.get("cpu-small"), code, "helical-runner: error: x", oom_killed=oom)
    assert type(error) is exception and f"exit code {code}" in str(error)


def test_operator_reads_oom_killed_from_the_kept_container(operator, monkeypatch):
    monkeypatch.setattr(RunnerOperator, "dag_id", property(lambda self: "helical_finetune"))
    operator.fake_cli.exit_code, operator.fake_cli.oom_killed = 137, True

    def killed(self, context):
        self.container = {"Id": "c3"}
        raise DockerContainerFailedException("Docker container failed: {'StatusCode': 137}", logs=[])

    monkeypatch.setattr(DockerOperator, "execute", killed)
    with pytest.raises(AirflowFailException, match="memory_limit=8g.*cpu-large"):
        operator.execute(operator.context)
    assert operator.fake_cli.removed == []  # kept for debugging
