"""The Airflow side's small library, shared by the DAGs in this folder.

Imports Airflow, pyyaml and (inside functions) boto3 only: never torch, helical or helical_runner, which are
not in the Airflow image. Nothing here touches the metadata DB, a connection or the network at import time:
settings come from the environment and the S3 connection is resolved when a task runs.
"""
