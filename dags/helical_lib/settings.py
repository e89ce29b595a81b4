"""Deployment settings, read from the environment of the process that runs a task (never at parse time).

Every name is listed, with a comment, in `.env-template`; the compose files pass them to the workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_BUCKET = "helical"
DEFAULT_CONN_ID = "helical_s3"  # resolved from AIRFLOW_CONN_HELICAL_S3, never created by hand
# Runners' own S3 credentials (AIRFLOW_CONN_HELICAL_S3_RUNNER): read anything, write chunks/ and runs/ only
# (docker/storage/runner-policy.json); a runner never holds the keys that can touch incoming/ or ledger/.
DEFAULT_RUNNER_CONN_ID = "helical_s3_runner"
DEFAULT_RUNNER_NETWORK = "helical-runners"  # reaches S3 and the Pushgateway only (README, "Security")


@dataclass(frozen=True)
class Settings:
    bucket: str  # the bucket with incoming/, chunks/, runs/, quarantine/
    s3_conn_id: str  # Airflow connection (type aws) with the S3/MinIO endpoint and credentials
    runner_s3_conn_id: str  # the connection whose (least-privilege) credentials runner containers get
    docker_url: str  # the docker-socket-proxy; no Airflow container sees docker.sock itself
    data_dir: str  # host path of the data folder, mounted at /data in every runner container
    network: str  # network_mode of runner containers: the runners' own network, never the stack's
    runner_user: str  # uid:gid runner containers run as (never root)
    runner_s3_endpoint: str  # S3 endpoint as seen from runner containers; "" = the connection's
    pushgateway_url: str  # where runners push progress metrics; "" = no push
    extra_hosts: str  # "name:ip,name:ip" added to runner containers' /etc/hosts; "" = none
    runner_mode: str  # docker (containers through the proxy) | local (the same CLI as a worker subprocess)
    runner_bin: str  # the helical-runner executable for local mode
    runner_profiles: str  # profiles file as runners see it (a /data path): ""= the copy baked into the image
    # MLflow's tracking server as runners reach it (they log runs and register models there; check_input
    # resolves helical_annotate's registered model there too); "" = no tracking, no registry
    mlflow_tracking_uri: str
    mlflow_ui_url: str  # the MLflow UI as a person opens it, for the links in reports; "" = the tracking URI
    # the worker host a step runs on (docker-compose-worker.yaml's HELICAL_WORKER_NAME): a label of its runner
    # container and of its metrics, so dashboards tell hosts apart; "" = the central host
    host: str = ""

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(
            bucket=env.get("HELICAL_BUCKET", DEFAULT_BUCKET),
            s3_conn_id=env.get("HELICAL_S3_CONN_ID", DEFAULT_CONN_ID),
            runner_s3_conn_id=env.get("HELICAL_RUNNER_S3_CONN_ID", DEFAULT_RUNNER_CONN_ID),
            docker_url=env.get("DOCKER_HOST", "tcp://docker-socket-proxy:2375"),
            data_dir=env.get("HELICAL_DATA_DIR", ""),
            network=env.get("HELICAL_RUNNER_NETWORK", DEFAULT_RUNNER_NETWORK),
            runner_user=env.get("HELICAL_RUNNER_USER", "50000:0"),
            runner_s3_endpoint=env.get("HELICAL_RUNNER_S3_ENDPOINT", ""),
            pushgateway_url=env.get("PUSHGATEWAY_URL", ""),
            extra_hosts=env.get("HELICAL_RUNNER_EXTRA_HOSTS", ""),
            runner_mode=env.get("HELICAL_RUNNER_MODE", "docker"),
            runner_bin=env.get("HELICAL_RUNNER_BIN", "helical-runner"),
            runner_profiles=env.get("HELICAL_RUNNER_PROFILES", ""),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", ""),
            mlflow_ui_url=env.get("HELICAL_MLFLOW_UI_URL", ""),
            host=env.get("HELICAL_WORKER_NAME", ""),
        )
