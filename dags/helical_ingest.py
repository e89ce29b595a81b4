"""
### Start `helical_finetune` for every upload to `incoming/`

Runs continuously: a deferrable sensor waits in the triggerer (polling S3 every 5 s, no worker slot held)
until an `.h5ad` appears in `incoming/` whose key and ETag have not been handed on yet, then triggers one
`helical_finetune` run per upload with `{"data": "s3://<bucket>/<key>", "etag": "<etag>"}` as its conf, and
records the upload under `ledger/`. Run ids are derived from key + ETag: re-uploading the same file does
nothing, uploading new content under the same key starts a new run, and no upload ever gets two.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, TriggerRule, task

from helical_lib.ingest import NewObjectsSensor

FINETUNE_DAG = "helical_finetune"

with DAG(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule="@continuous",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    tags=["helical"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
) as dag:
    uploads = NewObjectsSensor(task_id="wait_for_uploads", poke_interval=5, timeout=24 * 3600)

    @task
    def runs_to_start(objects: list[dict]) -> list[dict]:
        """One trigger request per upload: a run id derived from key + ETag, the object in the conf."""
        from helical_lib import s3
        from helical_lib.settings import Settings

        bucket = Settings.from_env().bucket
        return [{"trigger_run_id": s3.ingest_run_id(o["key"], o["etag"]),
                 "conf": {"data": f"s3://{bucket}/{o['key']}", "etag": o["etag"]}} for o in objects]

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def record(objects: list[dict]) -> int:
        """Mark the uploads as handed on, so the sensor stops reporting them."""
        from helical_lib import s3
        from helical_lib.ingest import mark_seen
        from helical_lib.settings import Settings

        settings = Settings.from_env()
        return mark_seen(s3.client(settings.s3_conn_id), settings.bucket, objects)

    triggered = TriggerDagRunOperator.partial(
        task_id="trigger_finetune", trigger_dag_id=FINETUNE_DAG, skip_when_already_exists=True,
        wait_for_completion=False, logical_date=None,
    ).expand_kwargs(runs_to_start(uploads.output))
    triggered >> record(uploads.output)
