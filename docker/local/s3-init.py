"""The bucket-creation job of the local S3 stand-in (docker-compose-local.yaml's minio-init): what
docker-compose-storage.yaml's minio-init does with `mc`, done with boto3. Idempotent, like the original.

Reads S3_ENDPOINT (default http://minio:9000), HELICAL_BUCKET (default helical), the stack's credentials
HELICAL_S3_ACCESS_KEY / HELICAL_S3_SECRET_KEY, and the runner policy docker/storage/runner-policy.json
(mounted at /opt/helical/runner-policy.json by docker-compose-storage.yaml; RUNNER_POLICY_FILE overrides).

The runners' user (issue 20): like MinIO's init, this creates IAM user `helical-runner` in moto with the
policy document of docker/storage/runner-policy.json (bucket filled in) as its inline policy `helical-runner`,
so a broken document fails here, at `make stack`, as it would in MinIO. What it can't do is give that user
the access key of .env: moto's CreateAccessKey always makes up a random key id and secret (no API takes a
chosen one), and the runner containers get HELICAL_RUNNER_S3_ACCESS_KEY / SECRET_KEY from .env. So no key
is created here (a key nobody uses, and moto allows two per user, so a rerun would soon fail), and the local
stack does not enforce the policy: its moto runs without INITIAL_NO_AUTH_ACTION_COUNT, i.e. it accepts any
key and authorises nothing, the same as before for the stack's own user. The policy is enforced by MinIO in
the real stack and proven against moto with IAM enforcement by tests/airflow/test_runner_s3_policy.py.
"""

import os
import re
from pathlib import Path

import boto3

PREFIXES = ("incoming", "chunks", "runs", "quarantine", "ledger")  # the layout of docker-compose-storage.yaml
RUNNER = "helical-runner"  # IAM user and policy name, as minio-init's policy name
PLACEHOLDER = "${HELICAL_BUCKET}"


def policy_file() -> Path:
    if os.environ.get("RUNNER_POLICY_FILE"):
        return Path(os.environ["RUNNER_POLICY_FILE"])
    mounted = Path("/opt/helical/runner-policy.json")
    if mounted.is_file():
        return mounted
    return Path(__file__).resolve().parents[1] / "storage" / "runner-policy.json"  # run from the repository


def runner_policy(bucket: str) -> str:
    """The policy document with the bucket's name in place of ${HELICAL_BUCKET}."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise SystemExit(f"error: HELICAL_BUCKET '{bucket}' is not a valid bucket name")
    text = policy_file().read_text()
    if PLACEHOLDER not in text:
        raise SystemExit(f"error: {policy_file()} has no {PLACEHOLDER} to fill in")
    return text.replace(PLACEHOLDER, bucket)


def ensure_runner_user(iam, bucket: str) -> None:
    try:
        iam.create_user(UserName=RUNNER)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    iam.put_user_policy(UserName=RUNNER, PolicyName=RUNNER, PolicyDocument=runner_policy(bucket))  # replaces


def main() -> None:
    bucket = os.environ.get("HELICAL_BUCKET", "helical")
    session = boto3.Session(region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                            aws_access_key_id=os.environ["HELICAL_S3_ACCESS_KEY"],
                            aws_secret_access_key=os.environ["HELICAL_S3_SECRET_KEY"])
    endpoint = os.environ.get("S3_ENDPOINT", "http://minio:9000")
    s3 = session.client("s3", endpoint_url=endpoint)
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    for prefix in PREFIXES:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/.keep",
                      Body=f"{prefix}/ of the helical-airflow layout\n".encode())
    runner_key = os.environ.get("HELICAL_RUNNER_S3_ACCESS_KEY", "")
    if runner_key and runner_key in (os.environ["HELICAL_S3_ACCESS_KEY"], os.environ.get("MINIO_ROOT_USER")):
        raise SystemExit("error: HELICAL_RUNNER_S3_ACCESS_KEY must differ from HELICAL_S3_ACCESS_KEY and "
                         "MINIO_ROOT_USER")
    ensure_runner_user(session.client("iam", endpoint_url=endpoint), bucket)  # moto serves IAM on the same port
    print(f"bucket {bucket} ready; IAM user {RUNNER} has the runner policy (not enforced by the local moto)")


if __name__ == "__main__":
    main()
