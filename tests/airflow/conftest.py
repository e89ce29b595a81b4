"""Airflow-side tests: run with the Airflow venv (scripts/suite-airflow.sh), never with the runner's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

# Airflow reads its config when first imported: a private home, no examples, and a DB nobody can reach,
# so anything that touches the metadata DB at parse time fails loudly instead of creating one.
os.environ.setdefault("AIRFLOW_HOME", str(REPO / "build" / "airflow-home"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("HELICAL_PROFILES", None)
if str(DAGS) not in sys.path:
    sys.path.insert(0, str(DAGS))

TEST_CONN = {"conn_type": "aws", "login": "test-key", "password": "test-secret",
             "extra": {"endpoint_url": "http://s3.test:9000", "region_name": "eu-west-1"}}
RUNNER_CONN = {**TEST_CONN, "login": "runner-key", "password": "runner-secret"}


@pytest.fixture
def s3_conn(monkeypatch):
    """The helical_s3 connection (Airflow's own) and helical_s3_runner (the runners' least-privilege keys)
    from their environment variables, as the compose file provides them."""
    monkeypatch.setenv("AIRFLOW_CONN_HELICAL_S3", json.dumps(TEST_CONN))
    monkeypatch.setenv("AIRFLOW_CONN_HELICAL_S3_RUNNER", json.dumps(RUNNER_CONN))
    return TEST_CONN


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS))


@pytest.fixture
def moto_s3(monkeypatch):
    """An in-process S3 (moto) with the bucket, and the helical_s3 connection pointing at it."""
    from moto import mock_aws

    monkeypatch.setenv("AIRFLOW_CONN_HELICAL_S3", json.dumps(
        {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1"}}))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="helical")
        yield client
