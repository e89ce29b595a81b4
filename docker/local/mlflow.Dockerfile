# The MLflow tracking server, standing in for ghcr.io/mlflow/mlflow:v3.17.2-full where no registry is
# reachable (scripts/build-local-images.sh): PyPI's mlflow with exactly requirements/mlflow.lock (the venv
# `make demo` and the tests run the server from: mlflow 3.17.2, psycopg2 for the Postgres backend store,
# boto3 for the artifacts in S3/MinIO) in /opt/mlflow, on PATH as in the official image, whose
# command conventions it keeps (no entrypoint: the compose file runs `mlflow server ...`). Runs as nobody.
ARG BASE_IMAGE=helical-base:bookworm-py312
FROM ${BASE_IMAGE}
COPY requirements/mlflow.lock /tmp/mlflow.lock
# pip checks TLS against Debian's CA bundle (it holds the CAs the base image added) instead of its own
RUN python3.12 -m venv /opt/mlflow \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/mlflow/bin/pip install -q -r /tmp/mlflow.lock \
 && rm /tmp/mlflow.lock
ENV PATH=/opt/mlflow/bin:$PATH
USER 65534:65534
WORKDIR /tmp
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
