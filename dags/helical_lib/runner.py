"""Runner containers: a resource profile -> DockerOperator arguments, plan -> runner command, and the operator.

Queue routing is the only thing fixed at parse time (Celery routes by the task's `queue`): `chunk` always
runs on queue cpu (it needs no GPU), and the DAG has one finetune/predict branch per profile queue.
Everything else a profile decides (image, memory cap, GPUs) is applied when the task runs, from the profile
the run asked for, so one DAG serves every profile.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from docker.types import DeviceRequest, Mount

from helical_lib import profiles
from helical_lib.plan import DATA_MOUNT, EXIT_BAD_INPUT, EXIT_SUPERSEDED, EXIT_USAGE, NO_MODEL
from helical_lib.s3 import connection_env, safe_id
from helical_lib.settings import Settings

# DATA_MOUNT is read-only in runners, so inputs can't be harmed, but for these two folders:
WRITABLE_DIRS = ("scratch", "helical")  # the runner's scratch space and helical's model cache
PLAN_TASK = "check_input"  # the task whose XCom is the run's plan
CPU_STEPS = ("inspect", "chunk")  # runner steps that need no GPU: always on CPU_QUEUE, never holding a GPU worker's slot
CPU_QUEUE = "cpu"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
STOP_GRACE_SECONDS = 30  # docker stop's SIGTERM -> SIGKILL grace for an earlier attempt's container


def container_name(dag_id: str, task_id: str, run_id: str, try_number: int) -> str:
    """Unique per attempt and readable in `docker ps`: helical-<task>-<run>-t<try>-<random>."""
    return f"helical-{safe_id(task_id, 40)}-{safe_id(run_id, 60)}-t{try_number}-{secrets.token_hex(3)}"


def container_kwargs(profile: dict, settings: Settings, *, dag_id: str, task_id: str, run_id: str,
                     try_number: int, s3_env: dict[str, str], data: str = "", etag: str = "") -> dict[str, Any]:
    """The DockerOperator arguments one runner attempt gets from its profile and the deployment settings;
    `data` and `etag` (the exact input URL and its ETag) go into the labels, since ids are cleaned."""
    if not settings.data_dir:
        raise AirflowFailException("HELICAL_DATA_DIR is not set: the host data folder mounted at /data")
    name = container_name(dag_id, task_id, run_id, try_number)
    environment = {
        "HELICAL_RUN_ID": run_id,
        "HELICAL_DAG_ID": dag_id,
        "HELICAL_TASK_ID": task_id,
        # the attempt, for the runner's lease on its outputs: a newer try fences an older one out
        "HELICAL_TRY_NUMBER": str(try_number),
        "HELICAL_ATTEMPT": name,
        "HELICAL_SCRATCH": f"{DATA_MOUNT}/scratch",
        "CACHE_DIR_HELICAL_PREFIX": f"{DATA_MOUNT}/helical",
        **{k: v for k, v in s3_env.items() if k not in SECRET_ENV},
    }
    if settings.pushgateway_url:
        environment["PUSHGATEWAY_URL"] = settings.pushgateway_url
    if settings.runner_profiles:  # profiles edited after the image was built: runners read the same file
        environment["HELICAL_PROFILES"] = settings.runner_profiles
    if settings.mlflow_tracking_uri:  # each step logs an MLflow run (experiment = HELICAL_DAG_ID)
        environment["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    if settings.mlflow_ui_url:
        environment["HELICAL_MLFLOW_UI_URL"] = settings.mlflow_ui_url
    if settings.host:  # a worker host's name, on the runner's metrics (helical_runner_info's host label)
        environment["HELICAL_HOST"] = settings.host
    gpus = int(profile.get("gpus") or 0)
    device_requests = None
    if profile["device"] == "cuda" and gpus > 0:
        device_requests = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    extra_hosts = dict(h.split(":", 1) for h in settings.extra_hosts.split(",") if ":" in h) or None
    return {
        "image": profile["image"],
        "mem_limit": profile["memory_limit"],
        "device_requests": device_requests,
        "shm_size": profiles.parse_size("1g") if device_requests else None,  # DataLoader workers on GPUs
        "mounts": [Mount(target=DATA_MOUNT, source=settings.data_dir, type="bind", read_only=True),
                   *(Mount(target=f"{DATA_MOUNT}/{name}", source=f"{settings.data_dir.rstrip('/')}/{name}",
                           type="bind") for name in WRITABLE_DIRS)],
        "environment": environment,
        "private_environment": {k: v for k, v in s3_env.items() if k in SECRET_ENV},
        "labels": {"app": "helical-runner", "dag_id": dag_id, "task_id": task_id, "run_id": run_id,
                   "try_number": str(try_number), "profile": profile["name"],
                   **({"host": settings.host} if settings.host else {}),
                   **({"data": data, "etag": etag} if data else {})},
        "container_name": name,
        "network_mode": settings.network,
        "user": settings.runner_user,
        "extra_hosts": extra_hosts,
        "docker_url": settings.docker_url,
        "mount_tmp_dir": False,
        "auto_remove": "never",  # removed by RunnerOperator after success only: failures stay for debugging
    }


def stop_earlier_attempts(cli, labels: dict, name: str, log) -> list[str]:
    """Stop every running container of this DAG run's step (same dag_id, task_id and run_id labels) but
    `name`, and wait until each has exited: one runner container per step, whatever happened to the worker
    that started the earlier one (a SIGKILLed Celery worker leaves its container training). Only calls the
    socket proxy allows: list, stop, wait. Returns the names stopped."""
    wanted = [f"{key}={labels[key]}" for key in ("app", "dag_id", "task_id", "run_id")]
    stopped = []
    for found in cli.containers(all=True, filters={"label": wanted}):
        other = (found.get("Names") or ["?"])[0].lstrip("/")
        if other == name or found.get("State") not in ("running", "restarting", "paused", "created"):
            continue
        log.warning("an earlier attempt's container %s (try %s) is still %s: stopping it before this attempt "
                    "starts, so that one container works on this step", other,
                    found.get("Labels", {}).get("try_number", "?"), found.get("State"))
        cli.stop(found["Id"], timeout=STOP_GRACE_SECONDS)
        code = cli.wait(found["Id"], timeout=STOP_GRACE_SECONDS + 120).get("StatusCode")
        log.warning("container %s has exited (code %s)", other, code)
        stopped.append(other)
    return stopped


def _flags(pairs: list[tuple[str, Any]]) -> list[str]:
    """`--flag=value` for each value given: one argument each, so a value that begins with `-` (a label
    column named `--output=s3://...`, say) stays a value and can't be read as another option."""
    return [f"{flag}={value}" for flag, value in pairs if value not in (None, "")]


def runner_command(step: str, plan: dict) -> list[str]:
    """The `helical-runner` arguments of one step; optional settings left empty keep the profile's value."""
    common = [("--profile", plan["profile"]), ("--run-id", plan["run_id"])]
    manifest = f"{plan['chunks']}/manifest.json"
    choices = [("--counts", plan.get("counts")), ("--gene-column", plan.get("gene_column"))]  # read by the first two
    if step == "inspect":  # its facts go to the task log; a bad file fails here (error.json under the run)
        return ["inspect", *_flags([("--data", plan["data"]), ("--label-column", plan.get("label_column")),
                                    ("--output", plan["run"]), ("--model", plan.get("model")), *choices,
                                    ("--run-id", plan["run_id"])]),
                # no label column is then no error: inspect.json says `labelled: false` (pipeline's check_labels)
                *(["--unlabelled-ok"] if plan.get("or_annotate") else [])]
    if step == "chunk":
        return ["chunk", *_flags([("--input", plan["data"]), ("--output", plan["chunks"]),
                                  ("--cells-per-chunk", plan.get("cells_per_chunk")), *choices, *common])]
    if step == "finetune":
        return ["finetune", *_flags([("--data", manifest), ("--label-column", plan["label_column"]),
                                     ("--output", plan["run"]),
                                     ("--model", plan.get("model")), ("--epochs", plan.get("epochs")),
                                     ("--batch-size", plan.get("batch_size")),
                                     ("--tokens-per-batch", plan.get("tokens_per_batch")), ("--lr", plan.get("lr")),
                                     ("--precision", plan.get("precision")),
                                     ("--register", plan.get("registered_model")), ("--promote", plan.get("promote")),
                                     *common])]
    if step == "predict":  # the run's own model, or helical_annotate's pinned models:/NAME/VERSION
        return ["predict", *_flags([("--model", plan["model_uri"]), ("--data", manifest),
                                    ("--output", f"{plan['run']}/predict"), ("--embeddings", plan.get("embeddings")),
                                    ("--batch-size", plan.get("batch_size")),
                                    ("--precision", plan.get("precision")), *common]),
                *(["--no-embeddings"] if plan.get("no_embeddings") else [])]
    if step == "embed":
        return ["embed", *_flags([("--model", plan.get("model")), ("--data", manifest),
                                  ("--output", f"{plan['run']}/embed"), ("--batch-size", plan.get("batch_size")),
                                  ("--precision", plan.get("precision")), *common]),
                *_flags([("--color", column) for column in plan.get("color") or []])]
    raise ValueError(f"unknown runner step '{step}'")


def runner_error(logs: list | None) -> str:
    """The runner's one-line reason (`helical-runner: error: ...`) from the container's output, if any."""
    for line in reversed(logs or []):
        text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
        for part in reversed(text.splitlines()):
            if "helical-runner: error:" in part:
                return part[part.index("helical-runner: error:"):].strip()
    return ""


class _HardenedClient:
    """The Docker API client with every container's host config locked down (DockerOperator has no flags
    for these): all capabilities dropped and no privilege gain through setuid binaries."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_host_config(self, **kwargs):
        kwargs.setdefault("cap_drop", ["ALL"])
        kwargs.setdefault("security_opt", ["no-new-privileges"])
        kwargs.setdefault("pids_limit", 4096)
        return self._client.create_host_config(**kwargs)


class RunnerOperator(DockerOperator):
    """One `helical-runner` step in a container, configured at run time from the run's plan and profile."""

    ui_color = "#d6eaf8"

    def __init__(self, *, step: str, image: str, **kwargs):
        kwargs.setdefault("do_xcom_push", False)
        super().__init__(image=image, mount_tmp_dir=False, auto_remove="never", **kwargs)
        self.step = step

    @property
    def cli(self):
        return _HardenedClient(super().cli)

    def configure(self, context) -> None:
        plan = context["ti"].xcom_pull(task_ids=PLAN_TASK)
        if self.step == "predict" and not plan.get("model_uri"):  # helical_annotate before any champion exists
            raise AirflowSkipException(NO_MODEL)
        settings = Settings.from_env()
        profile = profiles.get(plan["profile"])
        if self.step in CPU_STEPS:
            profile = profiles.for_cpu_step(profile)
        self._profile = profile
        kwargs = container_kwargs(
            profile, settings, dag_id=self.dag_id, task_id=self.task_id, run_id=plan["run_id"],
            try_number=context["ti"].try_number, data=plan["data"], etag=plan["etag"],
            s3_env=connection_env(settings.runner_s3_conn_id, settings.runner_s3_endpoint))
        self._private_environment = kwargs.pop("private_environment")
        for name, value in kwargs.items():
            setattr(self, name, value)
        self.command = runner_command(self.step, plan)
        self.log.info("profile %s -> image %s, memory %s, GPUs %s; container %s", profile["name"], self.image,
                      self.mem_limit, profile["gpus"] if self.device_requests else 0, self.container_name)
        self.log.info("helical-runner %s", " ".join(self.command))

    def execute(self, context):
        self.configure(context)
        settings = Settings.from_env()
        if settings.runner_mode == "local":
            return self._run_local(settings)
        stop_earlier_attempts(self.cli, self.labels, self.container_name, self.log)
        try:
            super().execute(context)
        except DockerContainerFailedException as exc:
            state = {}
            try:  # GET /containers/{id}/json through the proxy; the container is kept (auto_remove never)
                state = self.cli.inspect_container(self.container["Id"])["State"]
            except Exception:  # noqa: BLE001 - the reason matters more than the code
                pass
            self.log.error("container %s kept for debugging (docker logs %s; docker rm %s)",
                           self.container_name, self.container_name, self.container_name)
            raise step_failure(self.step, self._profile, state.get("ExitCode"), runner_error(exc.logs) or str(exc),
                               oom_killed=bool(state.get("OOMKilled"))) from None
        self.cli.remove_container(self.container["Id"])

    def _run_local(self, settings: Settings) -> None:
        """No Docker engine (the demo on a bare machine): the same CLI and environment as a subprocess,
        with the container's /data paths pointing at the data folder itself."""
        def host(value: str) -> str:
            return settings.data_dir + value[len(DATA_MOUNT):] if value.startswith(f"{DATA_MOUNT}/") else value

        def host_arg(arg: str) -> str:  # --flag=/data/... as well as a bare /data/... path
            flag, sep, value = arg.partition("=")
            return f"{flag}={host(value)}" if sep and flag.startswith("--") else host(arg)

        env = {**os.environ, **{k: host(v) for k, v in self.environment.items()}, **self._private_environment}
        command = [settings.runner_bin, *(host_arg(arg) for arg in self.command)]
        self.log.info("local mode (HELICAL_RUNNER_MODE=local): %s", " ".join(command))
        self._process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, errors="replace")
        lines = []
        for line in self._process.stdout:
            self.log.info("%s", line.rstrip())
            lines = [*lines[-50:], line]
        code = self._process.wait()
        if code != 0:
            raise step_failure(self.step, self._profile, code,
                               runner_error(lines) or f"helical-runner exited with {code}")

    def on_kill(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.terminate()
            return
        super().on_kill()


def step_failure(step: str, profile: dict, code: int | None, reason: str, oom_killed: bool = False) -> Exception:
    """The exception a failed runner step raises: AirflowFailException (no retries) for a bad input (exit
    code 65), arguments the runner refuses (exit code 2: a retry would be refused alike) or a container the kernel killed at the profile's memory cap (Docker's State.OOMKilled: the
    same cap would only be killed again), else RuntimeError, which Airflow retries (a retry resumes from
    the last checkpoint). One line either way."""
    if oom_killed:
        larger = profiles.next_larger(profile["name"])
        advice = (f"rerun with a larger profile: {larger['name']} (memory_limit={larger['memory_limit']})"
                  if larger else "no profile has a larger cap: raise memory_limit in config/profiles.yaml")
        return AirflowFailException(
            f"{step} ran out of memory: the kernel killed the runner container at profile {profile['name']}'s "
            f"memory cap memory_limit={profile['memory_limit']} (exit code {code}); {advice} "
            f"[out of memory: not retried]")
    message = f"{step} failed (exit code {code}): {reason}"
    if code == EXIT_BAD_INPUT:
        return AirflowFailException(f"{message} [bad input: not retried]")
    if code == EXIT_SUPERSEDED:
        return AirflowFailException(f"{message} [a newer attempt holds this step's outputs: not retried]")
    if code == EXIT_USAGE:
        return AirflowFailException(f"{message} [the runner refused its arguments: not retried]")
    return RuntimeError(message)
