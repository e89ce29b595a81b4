"""The bucket-creation job of the local S3 stand-in (docker-compose-local.yaml's minio-init): what
docker-compose-storage.yaml's minio-init does with `mc`, done with boto3. Idempotent, like the original.

Reads S3_ENDPOINT (default http://minio:9000), HELICAL_BUCKET (default helical), the stack's credentials
HELICAL_S3_ACCESS_KEY / HELICAL_S3_SECRET_KEY, and the policies docker/storage/runner-policy.json and
docker/storage/mlflow-policy.json (mounted at /opt/helical/ by docker-compose-storage.yaml;
RUNNER_POLICY_FILE and MLFLOW_POLICY_FILE override).

The runners' user (issue 20): like MinIO's init, this creates IAM user `helical-runner` in moto with the
policy document of docker/storage/runner-policy.json (bucket filled in) as its inline policy `helical-runner`,
so a broken document fails here, at `make stack`, as it would in MinIO. What it can't do is give that user
the access key of .env: moto's CreateAccessKey always makes up a random key id and secret (no API takes a
chosen one), and the runner containers get HELICAL_RUNNER_S3_ACCESS_KEY / SECRET_KEY from .env. So no key
is created here (a key nobody uses, and moto allows two per user, so a rerun would soon fail), and the local
stack does not enforce the policy: its moto runs without INITIAL_NO_AUTH_ACTION_COUNT, i.e. it accepts any
key and authorises nothing, the same as before for the stack's own user. The policy is enforced by MinIO in
the real stack and proven against moto with IAM enforcement by tests/airflow/test_runner_s3_policy.py.
MLflow's user `helical-mlflow` (policy docker/storage/mlflow-policy.json: only mlflow/) is made the same
way, with the same limits: the tracking server's HELICAL_MLFLOW_S3_* keys are accepted as any key is.
"""

import os
import re
from pathlib import Path

import boto3

PREFIXES = ("incoming", "chunks", "runs", "quarantine", "ledger", "mlflow")  # docker-compose-storage.yaml's layout
# IAM user and policy name (as minio-init's policy names) -> (policy file name, its override variable)
USERS = {"helical-runner": ("runner-policy.json", "RUNNER_POLICY_FILE"),
         "helical-mlflow": ("mlflow-policy.json", "MLFLOW_POLICY_FILE")}
PLACEHOLDER = "${HELICAL_BUCKET}"


def policy_file(name: str, override: str) -> Path:
    if os.environ.get(override):
        return Path(os.environ[override])
    mounted = Path("/opt/helical") / name
    if mounted.is_file():
        return mounted
    return Path(__file__).resolve().parents[1] / "storage" / name  # run from the repository


def policy(path: Path, bucket: str) -> str:
    """The policy document with the bucket's name in place of ${HELICAL_BUCKET}."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise SystemExit(f"error: HELICAL_BUCKET '{bucket}' is not a valid bucket name")
    text = path.read_text()
    if PLACEHOLDER not in text:
        raise SystemExit(f"error: {path} has no {PLACEHOLDER} to fill in")
    return text.replace(PLACEHOLDER, bucket)


def ensure_user(iam, user: str, bucket: str) -> None:
    document = policy(policy_file(*USERS[user]), bucket)
    try:
        iam.create_user(UserName=user)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=document)  # replaces


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
    others = [os.environ["HELICAL_S3_ACCESS_KEY"], os.environ.get("MINIO_ROOT_USER")]
    for variable in ("HELICAL_RUNNER_S3_ACCESS_KEY", "HELICAL_MLFLOW_S3_ACCESS_KEY"):  # as minio-init refuses them
        key = os.environ.get(variable, "")
        if key and key in others:
            raise SystemExit(f"error: {variable} must differ from HELICAL_S3_ACCESS_KEY, MINIO_ROOT_USER and "
                             "the other users' keys")
        others.append(key)
    iam = session.client("iam", endpoint_url=endpoint)  # moto serves IAM on the same port
    for user in USERS:
        ensure_user(iam, user, bucket)
    print(f"bucket {bucket} ready; IAM users {', '.join(USERS)} have their policies (not enforced by the local moto)")


if __name__ == "__main__":
    main()
