"""The bucket-creation job of the local S3 stand-in (docker-compose-local.yaml's minio-init): what
docker-compose-storage.yaml's minio-init does with `mc`, done with boto3. Idempotent, like the original.

Reads S3_ENDPOINT (default http://minio:9000), HELICAL_BUCKET (default helical) and the stack's
credentials HELICAL_S3_ACCESS_KEY / HELICAL_S3_SECRET_KEY (moto accepts any, so no user is created).
"""

import os

import boto3

PREFIXES = ("incoming", "chunks", "runs", "quarantine", "ledger")  # the layout of docker-compose-storage.yaml

bucket = os.environ.get("HELICAL_BUCKET", "helical")
s3 = boto3.client("s3", endpoint_url=os.environ.get("S3_ENDPOINT", "http://minio:9000"),
                  region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                  aws_access_key_id=os.environ["HELICAL_S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["HELICAL_S3_SECRET_KEY"])
if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=bucket)
for prefix in PREFIXES:
    s3.put_object(Bucket=bucket, Key=f"{prefix}/.keep", Body=f"{prefix}/ of the helical-airflow layout\n".encode())
print(f"bucket {bucket} ready")
