"""
### Start a run for every upload to `incoming/`: fine-tune when it has labels, annotate when it has none

Runs continuously: a deferrable sensor waits in the triggerer (polling S3 every 5 s, no worker slot held)
until an `.h5ad` appears in `incoming/` whose key and ETag have not been handed on yet, then triggers one
run per upload, chosen by where it was put (README, "Uploads and annotation"):

| upload | run |
|---|---|
| `incoming/train/<label column>/<name>.h5ad` | `helical_finetune` on that label column |
| `incoming/annotate/<name>.h5ad` | `helical_annotate` (the registered model's champion, embeddings, clusters) |
| any other `incoming/<name>.h5ad` | `helical_finetune` on `cell_type`; a file without that column is handed to `helical_annotate` (never quarantined for lacking labels) |

`<name>` may hold folders; a `train/` folder that can't be a label column (empty, over 200 characters) makes
a plain upload. Each run's conf is `{"data": "s3://<bucket>/<key>", "etag": "<etag>", ...}`, and the upload is
recorded under `ledger/`. Run ids are derived from key + ETag: re-uploading the same file does nothing,
uploading new content under the same key starts a new run, and no upload ever gets two.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, TriggerRule, task

from helical_lib.ingest import ANNOTATE_DAG, FINETUNE_DAG, NewObjectsSensor

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
    def runs_to_start(objects: list[dict], dag_id: str) -> list[dict]:
        """One trigger request per upload routed to dag_id: a run id from key + ETag, the object in the conf."""
        from helical_lib import ingest
        from helical_lib.settings import Settings

        return ingest.runs_to_start(objects, Settings.from_env().bucket, dag_id)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def record(objects: list[dict]) -> int:
        """Mark the uploads as handed on, so the sensor stops reporting them."""
        from helical_lib import s3
        from helical_lib.ingest import mark_seen
        from helical_lib.settings import Settings

        settings = Settings.from_env()
        return mark_seen(s3.client(settings.s3_conn_id), settings.bucket, objects)

    recorded = record(uploads.output)
    for dag_id in (FINETUNE_DAG, ANNOTATE_DAG):
        what = dag_id.removeprefix("helical_")
        requests = runs_to_start.override(task_id=f"runs_to_{what}")(uploads.output, dag_id)
        TriggerDagRunOperator.partial(
            task_id=f"trigger_{what}", trigger_dag_id=dag_id, skip_when_already_exists=True,
            wait_for_completion=False, logical_date=None,
        ).expand_kwargs(requests) >> recorded
