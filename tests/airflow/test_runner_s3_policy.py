"""Least privilege for runners in S3 (issue 20): the runner containers' credentials read the bucket and
write only chunks/ and runs/; incoming/, ledger/ and quarantine/ can't be rewritten or deleted with them.

Server: moto's S3 + IAM HTTP server (`moto_server`, moto 5.2.5 of requirements/airflow.lock), started as a
subprocess on a free 127.0.0.1 port with INITIAL_NO_AUTH_ACTION_COUNT set to the exact number of setup calls.
Those calls (bucket, protected objects, the runner user with exactly docker/storage/runner-policy.json and its
access key, an admin user to check with) run unauthenticated; every call after them is authenticated (SigV4
against the IAM access keys) and authorised against the caller's IAM policies, which the first test proves.
MinIO applies the same policy document: docker-compose-storage.yaml's minio-init creates it with
`mc admin policy create` and attaches it to HELICAL_RUNNER_S3_ACCESS_KEY (tested below with a stand-in `mc`).

What moto does differently from MinIO, and why the assertions still hold:
- keys are literal in both, but MinIO refuses object names with `.`/`..` segments, while moto stores them
  as they are: `runs/../incoming/x` is then a new object under runs/, and incoming/x stays byte-identical;
- moto does not check s3:GetObject on a CopyObject's source (AWS and MinIO do); the policy lets the runner
  read the whole bucket anyway, and the destination's s3:PutObject is checked by all three;
- moto matches Resource patterns as regexes with only `*` translated, so a `.` in a bucket name would match
  any character there (this bucket, `helical`, has none).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO

POLICY_FILE = REPO / "docker" / "storage" / "runner-policy.json"
BUCKET = "helical"
PROTECTED = ("incoming", "ledger", "quarantine")
WRITABLE = ("chunks", "runs")
MIB = 1 << 20


def runner_policy(bucket: str = BUCKET) -> str:
    """The policy document as minio-init and s3-init.py hand it to the server: the bucket filled in."""
    return POLICY_FILE.read_text().replace("${HELICAL_BUCKET}", bucket)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(service: str, endpoint: str, key: str, secret: str):
    import boto3
    from botocore.config import Config

    # as the runner's own client (helical_runner/data/storage.py): SigV4, path-style, no retries to hide a denial
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=config)


def error_code(call) -> str:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "no error"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def moto_iam(tmp_path_factory):
    """moto_server with IAM enforcement after setup; yields the endpoint, the runner's and an admin's keys."""
    server = Path(sys.executable).parent / "moto_server"
    assert server.exists(), f"{server} missing: moto[server] is in requirements/airflow.lock"
    endpoint = f"http://127.0.0.1:{free_port()}"
    contents = {f"{prefix}/x": os.urandom(MIB + 4321) for prefix in PROTECTED}
    admin_policy = json.dumps({"Version": "2012-10-17",
                               "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    keys: dict[str, dict] = {}
    root = {"key": "setup-root", "secret": "setup-root-secret"}  # any key works until the count is spent

    def s3():
        return client("s3", endpoint, root["key"], root["secret"])

    def iam():
        return client("iam", endpoint, root["key"], root["secret"])

    # Each step is exactly one request: moto counts them, and authenticates from the next one on.
    setup = [lambda: s3().create_bucket(Bucket=BUCKET)]
    setup += [lambda k=k, v=v: s3().put_object(Bucket=BUCKET, Key=k, Body=v) for k, v in contents.items()]
    for user, document in (("helical-runner", runner_policy()), ("helical-admin", admin_policy)):
        setup += [lambda u=user: iam().create_user(UserName=u),
                  lambda u=user, d=document: iam().put_user_policy(UserName=u, PolicyName=u, PolicyDocument=d),
                  lambda u=user: keys.__setitem__(u, iam().create_access_key(UserName=u)["AccessKey"])]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(len(setup))
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", endpoint.rsplit(":", 1)[1]], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # /moto-api/ is not an AWS action: it does not count
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        for step in setup:
            step()
        runner, admin = keys["helical-runner"], keys["helical-admin"]
        yield SimpleNamespace(
            endpoint=endpoint, contents=contents, root=root,
            runner_key=runner["AccessKeyId"], runner_secret=runner["SecretAccessKey"],
            runner=client("s3", endpoint, runner["AccessKeyId"], runner["SecretAccessKey"]),
            admin=client("s3", endpoint, admin["AccessKeyId"], admin["SecretAccessKey"]))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_protected_untouched(moto_iam) -> None:
    for key, data in moto_iam.contents.items():
        assert sha(moto_iam.admin.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == sha(data), key
    listed = {o["Key"] for o in moto_iam.admin.list_objects_v2(Bucket=BUCKET)["Contents"]}
    strays = {k for k in listed if k.startswith(tuple(f"{p}/" for p in PROTECTED))} - set(moto_iam.contents)
    assert not strays, f"objects appeared under protected prefixes: {sorted(strays)}"


# --- the policy document ----------------------------------------------------------------------------------

def test_policy_document_grants_exactly_what_the_runner_needs():
    policy = json.loads(runner_policy())
    granted = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        for action in statement["Action"]:
            granted.setdefault(action, set()).update(statement["Resource"])
    bucket_arn = f"arn:aws:s3:::{BUCKET}"
    writable = {f"{bucket_arn}/{p}/*" for p in WRITABLE}
    assert granted == {
        "s3:GetObject": {f"{bucket_arn}/*"},  # inputs may be anywhere in the bucket (HEAD is GetObject too)
        "s3:ListBucket": {bucket_arn},
        "s3:PutObject": writable,  # PutObject covers CreateMultipartUpload, UploadPart, CompleteMultipartUpload
        "s3:AbortMultipartUpload": writable,
        "s3:ListMultipartUploadParts": writable,
        "s3:DeleteObject": writable,
    }
    assert "${HELICAL_BUCKET}" in POLICY_FILE.read_text()  # minio-init and s3-init.py fill in the bucket


# --- moto enforces it -------------------------------------------------------------------------------------

def test_moto_enforces_iam_after_the_setup_calls(moto_iam):
    """Otherwise every assertion below would pass for the wrong reason."""
    setup_client = client("s3", moto_iam.endpoint, moto_iam.root["key"], moto_iam.root["secret"])
    assert error_code(lambda: setup_client.list_objects_v2(Bucket=BUCKET)) == "InvalidAccessKeyId"
    forged = client("s3", moto_iam.endpoint, moto_iam.runner_key, "not-the-secret")
    assert error_code(lambda: forged.get_object(Bucket=BUCKET, Key="incoming/x")) == "SignatureDoesNotMatch"
    assert error_code(lambda: moto_iam.admin.list_objects_v2(Bucket=BUCKET)) == "no error"


def test_runner_reads_inputs_anywhere_in_the_bucket(moto_iam):
    runner, data = moto_iam.runner, moto_iam.contents["incoming/x"]
    head = runner.head_object(Bucket=BUCKET, Key="incoming/x")  # storage.stat
    assert head["ContentLength"] == len(data)
    assert runner.get_object(Bucket=BUCKET, Key="incoming/x")["Body"].read() == data  # storage.get_bytes
    ranged = runner.get_object(Bucket=BUCKET, Key="incoming/x", Range="bytes=1000-70999",
                               IfMatch=head["ETag"])  # s3_file.S3File._get
    assert ranged["Body"].read() == data[1000:71000]
    pages = runner.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="incoming/")  # list_names
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == ["incoming/x"]
    for key in ("ledger/x", "quarantine/x"):  # reading is fine everywhere in the bucket
        assert runner.get_object(Bucket=BUCKET, Key=key)["Body"].read() == moto_iam.contents[key]


def test_runner_writes_and_deletes_under_chunks_and_runs(moto_iam, tmp_path):
    from boto3.s3.transfer import TransferConfig

    runner, admin = moto_iam.runner, moto_iam.admin
    runner.put_object(Bucket=BUCKET, Key="chunks/ds-1/manifest.json", Body=b"{}")  # storage.put_bytes
    runner.put_object(Bucket=BUCKET, Key="runs/run-1/report.json", Body=b"{}")

    part = os.urandom(5 * MIB)  # the smallest part S3 (and moto) accepts before the last one
    upload = runner.create_multipart_upload(Bucket=BUCKET, Key="runs/run-1/model/model.safetensors")
    etags = [runner.upload_part(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"], PartNumber=n,
                                Body=body)["ETag"] for n, body in ((1, part), (2, b"tail"))]
    listed = runner.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    runner.complete_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e}
                                                                for n, e in enumerate(etags, 1)]})
    assert admin.get_object(Bucket=BUCKET, Key=upload["Key"])["Body"].read() == part + b"tail"

    aborted = runner.create_multipart_upload(Bucket=BUCKET, Key="chunks/ds-1/chunk-00000.h5ad")
    runner.abort_multipart_upload(Bucket=BUCKET, Key=aborted["Key"], UploadId=aborted["UploadId"])

    # storage.upload / storage.download: boto3's transfer manager, multipart above its threshold
    source = tmp_path / "checkpoint.pt"
    source.write_bytes(os.urandom(6 * MIB))
    transfer = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    runner.upload_file(str(source), BUCKET, "runs/run-1/checkpoint.pt", Config=transfer)
    runner.download_file(BUCKET, "runs/run-1/checkpoint.pt", str(tmp_path / "back.pt"), Config=transfer)
    assert (tmp_path / "back.pt").read_bytes() == source.read_bytes()

    for key in ("runs/run-1/checkpoint.pt", "chunks/ds-1/manifest.json"):  # storage.delete
        runner.delete_object(Bucket=BUCKET, Key=key)
        assert error_code(lambda key=key: admin.head_object(Bucket=BUCKET, Key=key)) == "404"
    assert_protected_untouched(moto_iam)


@pytest.mark.parametrize("prefix", PROTECTED)
def test_runner_can_neither_rewrite_nor_delete_protected_prefixes(moto_iam, prefix, tmp_path):
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    runner, key = moto_iam.runner, f"{prefix}/x"
    assert error_code(lambda: runner.put_object(Bucket=BUCKET, Key=key, Body=b"rewritten")) == "AccessDenied"
    assert error_code(lambda: runner.put_object(Bucket=BUCKET, Key=f"{prefix}/new", Body=b"n")) == "AccessDenied"
    assert error_code(lambda: runner.delete_object(Bucket=BUCKET, Key=key)) == "AccessDenied"
    result = runner.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key}]})  # per-key errors
    assert [(e["Key"], e["Code"]) for e in result.get("Errors", [])] == [(key, "AccessDenied")]
    assert not result.get("Deleted")
    assert error_code(lambda: runner.copy_object(Bucket=BUCKET, Key=key, CopySource={
        "Bucket": BUCKET, "Key": "ledger/x" if prefix != "ledger" else "incoming/x"})) == "AccessDenied"
    assert error_code(lambda: runner.create_multipart_upload(Bucket=BUCKET, Key=key)) == "AccessDenied"
    assert error_code(lambda: runner.put_object_acl(Bucket=BUCKET, Key=key, ACL="public-read")) == "AccessDenied"
    assert error_code(lambda: runner.put_object_tagging(Bucket=BUCKET, Key=key, Tagging={"TagSet": []})) \
        == "AccessDenied"
    source = tmp_path / "big"
    source.write_bytes(os.urandom(6 * MIB))
    with pytest.raises(S3UploadFailedError, match="AccessDenied"):
        runner.upload_file(str(source), BUCKET, key, Config=TransferConfig(multipart_threshold=5 * MIB))
    assert_protected_untouched(moto_iam)


def test_runner_cannot_change_the_bucket_or_iam(moto_iam):
    runner = moto_iam.runner
    public = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]})
    attempts = {
        "delete bucket": lambda: runner.delete_bucket(Bucket=BUCKET),
        "bucket policy": lambda: runner.put_bucket_policy(Bucket=BUCKET, Policy=public),
        "versioning": lambda: runner.put_bucket_versioning(Bucket=BUCKET,
                                                           VersioningConfiguration={"Status": "Enabled"}),
        "lifecycle": lambda: runner.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={
            "Rules": [{"ID": "x", "Status": "Enabled", "Filter": {"Prefix": "incoming/"},
                       "Expiration": {"Days": 1}}]}),
        "other bucket": lambda: runner.create_bucket(Bucket="helical-other"),
        "list buckets": lambda: runner.list_buckets(),
        "iam": lambda: client("iam", moto_iam.endpoint, moto_iam.runner_key, moto_iam.runner_secret)
        .put_user_policy(UserName="helical-runner", PolicyName="more", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})),
    }
    assert {name: error_code(call) for name, call in attempts.items()} == dict.fromkeys(attempts, "AccessDenied")
    assert_protected_untouched(moto_iam)


# Keys are literal strings: none of these is a path that escapes runs/ or chunks/.
DENIED_KEYS = ["Runs/x", "RUNS/x", "Chunks/x", "runs", "chunks", "chunksX/y", "runsX/y", "runs-x/y", "/runs/x",
               " runs/x", "runs%2F..%2Fincoming%2Fx", "runs%2Fx", "incoming/../runs/x", "ledger/../chunks/x",
               "quarantine/./runs/x"]
LITERAL_KEYS = ["runs/../incoming/x", "runs/./../incoming/x", "runs//../../incoming/x", "chunks/../ledger/x",
                "runs/%2e%2e/incoming/x", "runs/..%2Fincoming/x", "runs/..\\incoming/x", "chunks/../../quarantine/x"]


@pytest.mark.parametrize("key", DENIED_KEYS)
def test_lookalike_keys_outside_the_writable_prefixes_are_denied(moto_iam, key):
    runner = moto_iam.runner
    assert error_code(lambda: runner.put_object(Bucket=BUCKET, Key=key, Body=b"evil")) == "AccessDenied"
    assert error_code(lambda: runner.delete_object(Bucket=BUCKET, Key=key)) == "AccessDenied"
    assert error_code(lambda: moto_iam.admin.head_object(Bucket=BUCKET, Key=key)) == "404"
    assert_protected_untouched(moto_iam)


@pytest.mark.parametrize("key", LITERAL_KEYS)
def test_dot_segments_stay_inside_the_writable_prefix(moto_iam, key):
    """Allowed, because the key really starts with runs/ or chunks/, and it lands exactly there: the object
    is that literal key (MinIO refuses such names instead), never incoming/x, ledger/x or quarantine/x."""
    moto_iam.runner.put_object(Bucket=BUCKET, Key=key, Body=b"evil")
    assert moto_iam.admin.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"evil"
    moto_iam.runner.delete_object(Bucket=BUCKET, Key=key)
    assert_protected_untouched(moto_iam)


# --- the runner's own storage code under the policy ---------------------------------------------------------

RUNNER_SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    from pathlib import Path
    from helical_runner.data import storage
    from helical_runner.data.s3_file import S3File

    bucket = sys.argv[1]
    loc = storage.parse(f"s3://{bucket}/incoming/x")
    info = storage.stat(loc)
    whole = storage.get_bytes(loc)
    with S3File(loc, block_size=64 * 1024) as f:
        f.seek(100_000)
        assert f.read(200_000) == whole[100_000:300_000]
    scratch = Path(tempfile.mkdtemp())
    assert storage.download(loc, scratch / "in.h5ad").read_bytes() == whole
    out = storage.parse(f"s3://{bucket}/runs/run-2")
    storage.put_bytes(out.join("report.json"), b"{}", "application/json")
    big = scratch / "model.safetensors"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # above boto3's 8 MiB threshold: a multipart upload
    storage.upload(big, out.join("model", big.name))
    assert sorted(storage.list_names(out)) == ["model/model.safetensors", "report.json"]
    storage.delete(out.join("report.json"))
    for target in ("incoming/x", "ledger/y", "quarantine/z"):
        try:
            storage.put_bytes(storage.parse(f"s3://{bucket}/{target}"), b"rewritten")
        except Exception as exc:
            assert storage.error_code(exc) == "AccessDenied", repr(exc)
        else:
            raise AssertionError(f"the runner could write {target}")
        try:
            storage.delete(storage.parse(f"s3://{bucket}/{target}"))
        except Exception as exc:
            assert storage.error_code(exc) == "AccessDenied", repr(exc)
        else:
            raise AssertionError(f"the runner could delete {target}")
    print("runner storage ok", info.size)
""")


def test_the_runners_storage_calls_pass_with_the_runner_credentials(moto_iam):
    """helical_runner.data.storage and s3_file, run as in a runner container: S3_ENDPOINT_URL and AWS_* only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(PYTHONPATH=str(REPO), S3_ENDPOINT_URL=moto_iam.endpoint, AWS_ACCESS_KEY_ID=moto_iam.runner_key,
               AWS_SECRET_ACCESS_KEY=moto_iam.runner_secret, AWS_DEFAULT_REGION="us-east-1", S3_RETRY_SECONDS="5")
    result = subprocess.run([sys.executable, "-c", RUNNER_SCRIPT, BUCKET], env=env, capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runner storage ok" in result.stdout
    assert_protected_untouched(moto_iam)


# --- how the stack creates the user -------------------------------------------------------------------------

def minio_init_script() -> str:
    import yaml

    service = yaml.safe_load((REPO / "docker-compose-storage.yaml").read_text())["services"]["minio-init"]
    assert "./docker/storage/runner-policy.json:/opt/helical/runner-policy.json:ro" in service["volumes"]
    for name in ("HELICAL_RUNNER_S3_ACCESS_KEY", "HELICAL_RUNNER_S3_SECRET_KEY"):
        assert name in service["environment"]
    return service["command"][0].replace("$$", "$")  # as compose hands it to the container's sh


def run_minio_init(tmp_path: Path, attach_fails: bool = False, **overrides) -> tuple[subprocess.CompletedProcess, Path]:
    """minio-init's script under dash, with a stand-in `mc` that logs its arguments and answers `user info`."""
    rendered = tmp_path / "rendered.json"
    script = minio_init_script().replace("/opt/helical/", f"{POLICY_FILE.parent}/") \
        .replace("/tmp/runner-policy.json", str(rendered)).replace("/tmp/mlflow-policy.json", str(tmp_path / "mlflow.json"))
    fake_mc = textwrap.dedent("""
        mc() {
          echo "mc $*" >> "$MC_LOG"
          case "$*" in
            "admin policy attach local helical-runner "*) [ -z "$ATTACH_FAILS" ] ;;
            "admin user info "*) echo '{"status":"success","accessKey":"r","policyName":"helical-runner"}' ;;
          esac
        }
    """)
    env = {"PATH": "/usr/bin:/bin", "MC_LOG": str(tmp_path / "mc.log"), "MINIO_ROOT_USER": "root",
           "MINIO_ROOT_PASSWORD": "root-password", "HELICAL_S3_ACCESS_KEY": "airflow-key",
           "HELICAL_S3_SECRET_KEY": "airflow-secret", "HELICAL_RUNNER_S3_ACCESS_KEY": "runner-key",
           "HELICAL_RUNNER_S3_SECRET_KEY": "runner-secret", "HELICAL_MLFLOW_S3_ACCESS_KEY": "mlflow-key",
           "HELICAL_MLFLOW_S3_SECRET_KEY": "mlflow-secret", "HELICAL_BUCKET": "lab-bucket",
           "ATTACH_FAILS": "1" if attach_fails else "", **overrides}
    return subprocess.run(["dash", "-ec", fake_mc + script], env=env, capture_output=True, text=True), rendered


def test_minio_init_creates_the_runner_user_with_the_policy(tmp_path):
    result, rendered = run_minio_init(tmp_path)
    assert result.returncode == 0, result.stderr
    assert rendered.read_text() == runner_policy("lab-bucket")  # the sh substitution = the Python one
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert "mc admin user add local runner-key runner-secret" in calls
    assert f"mc admin policy create local helical-runner {rendered}" in calls
    assert "mc admin policy attach local helical-runner --user runner-key" in calls
    assert not any("readwrite" in c and "runner-key" in c for c in calls)


def test_minio_init_is_idempotent_when_the_policy_is_already_attached(tmp_path):
    """Older mc fails `policy attach` of an attached policy ("already in effect"): init checks and goes on."""
    result, _ = run_minio_init(tmp_path, attach_fails=True)
    assert result.returncode == 0, result.stderr
    assert "mc admin user info local runner-key --json" in (tmp_path / "mc.log").read_text()


@pytest.mark.parametrize("same_as", ["HELICAL_S3_ACCESS_KEY", "MINIO_ROOT_USER"])
def test_minio_init_refuses_a_runner_key_that_is_another_users(tmp_path, same_as):
    value = {"HELICAL_S3_ACCESS_KEY": "airflow-key", "MINIO_ROOT_USER": "root"}[same_as]
    result, _ = run_minio_init(tmp_path, HELICAL_RUNNER_S3_ACCESS_KEY=value)
    assert result.returncode == 1 and "must differ" in result.stderr
    assert "helical-runner" not in (tmp_path / "mc.log").read_text()


def test_local_stand_in_creates_the_same_policy_without_auth(tmp_path):
    """docker/local/s3-init.py against moto without IAM enforcement (as `make stack` runs it), twice."""
    server = Path(sys.executable).parent / "moto_server"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INITIAL_NO_AUTH"))}
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        init_env = {**env, "S3_ENDPOINT": f"http://127.0.0.1:{port}", "HELICAL_BUCKET": "lab-bucket",
                    "HELICAL_S3_ACCESS_KEY": "airflow-key", "HELICAL_S3_SECRET_KEY": "airflow-secret",
                    "HELICAL_RUNNER_S3_ACCESS_KEY": "runner-key", "RUNNER_POLICY_FILE": str(POLICY_FILE)}
        for _ in range(2):  # idempotent: `up` runs it every time
            result = subprocess.run([sys.executable, str(REPO / "docker" / "local" / "s3-init.py")], env=init_env,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
        iam = client("iam", f"http://127.0.0.1:{port}", "any", "any")
        document = iam.get_user_policy(UserName="helical-runner", PolicyName="helical-runner")["PolicyDocument"]
        assert document == json.loads(runner_policy("lab-bucket"))
    finally:
        process.terminate()
        process.wait(timeout=10)
