# An S3 server standing in for MinIO where no registry is reachable (scripts/build-local-images.sh):
# moto's S3 HTTP server (the one the tests use) on MinIO's port 9000, and s3-init.py, the bucket-creation
# job of minio-init. Versions are those of requirements/runner.lock (moto 5.2.5, boto3). Differences from
# MinIO that a user of the stack notices: objects live in memory (a restart of the service empties the
# bucket), any access key and secret are accepted, and there is no console on port 9001.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY requirements/runner.lock /tmp/runner.lock
# pip checks TLS against Debian's CA bundle (it holds the CAs the base image added) instead of its own
RUN python3.12 -m venv /opt/s3 \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/s3/bin/pip install -q -c /tmp/runner.lock "moto[server]" \
 && rm /tmp/runner.lock
COPY docker/local/s3-init.py /opt/s3/s3-init.py
ENV PATH=/opt/s3/bin:$PATH
USER 65534:65534
EXPOSE 9000
ENTRYPOINT ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
