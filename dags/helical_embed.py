"""
### Embed an .h5ad's cells with a pretrained model: embeddings, Leiden clusters and a UMAP, no labels needed

Trigger from the UI (the form below is validated). Most files carry no cell types: this runs a pretrained
model (any model `helical-runner info` lists: Geneformer's nine, scGPT) over every cell. The run checks its
input and that a live Celery worker serves its profile's queue, then runs three `helical-runner` containers
through the docker-socket-proxy:

0. **inspect** the .h5ad (where its counts and gene ids are, how many genes the model knows);
1. **chunk** it into row chunks under `chunks/<dataset>/` (on queue `cpu`, as in helical_finetune);
2. **embed** the chunks on the profile's queue → `runs/<run_id>/embed/`: `embeddings.h5ad` (every cell's obs,
   `obsm['X_<family>']`, `obs['leiden']`, `obsm['X_umap']`; open it with `anndata.read_h5ad`), `umap.png`
   coloured by cluster and by each column named in *Colour by*, `report.json` and `report.html`;

and **publishes** a summary (page URLs, cells, clusters) to `runs/<run_id>/summary.json`. A bad input fails
at once, as in helical_finetune.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, TaskGroup, TriggerRule, task

from helical_lib import forms, models, profiles
from helical_lib.runner import CPU_QUEUE, CPU_STEPS, PLAN_TASK, RunnerOperator

DEFAULT_PROFILE, PROFILES = profiles.load_all()

PARAMS = {
    "data": forms.data("embed"),
    "model": forms.model(models.DEFAULT_MODEL, models.embeddable(), "Pretrained model to embed the cells with"),
    "profile": forms.profile(DEFAULT_PROFILE, PROFILES),
    "color": Param([], type="array", title="Colour by", items={"type": "string", "minLength": 1, "maxLength": 200},
                   maxItems=8, description="obs columns to colour umap.png by, beside the clusters (e.g. donor_id)"),
    **forms.runtime_choices(),
    **forms.input_choices(),
}

with DAG(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=8,
    params=PARAMS,
    tags=["helical"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
) as dag:

    @task(task_id=PLAN_TASK, retries=3)
    def check_input(params: dict | None = None, run_id: str | None = None) -> dict:
        """Check the input exists and fits the profile; return the run's plan (URLs, ids, settings)."""
        from helical_lib.plan import checked_plan

        return checked_plan(params, run_id)

    @task.branch
    def route(plan: dict) -> str:
        """Send embed to the Celery queue of the run's profile."""
        return f"on_{plan['queue']}.embed"

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def publish_summary(plan: dict) -> dict:
        """Write runs/<run_id>/summary.json: page URLs, cells, clusters."""
        from helical_lib.plan import summarise_embedding

        summary = summarise_embedding(plan)
        print(f"report: {summary['report_html_url']}\nembeddings: {summary['embeddings_url']}")
        print(json.dumps(summary, indent=1))
        return summary

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def quarantine_bad_input(ti=None) -> dict | None:
        """If a runner step failed on a bad input, move the upload to quarantine/ beside its reason."""
        from helical_lib.plan import quarantine

        plan = ti.xcom_pull(task_ids=PLAN_TASK)
        return quarantine(plan) if plan else None

    plan = check_input()
    inspect, chunk = (RunnerOperator(task_id=step, step=step, queue=CPU_QUEUE, image=PROFILES[DEFAULT_PROFILE]["image"])
                      for step in CPU_STEPS)
    branches = []
    for queue in profiles.queues():
        with TaskGroup(f"on_{queue}") as group:
            RunnerOperator(task_id="embed", step="embed", queue=queue, image=PROFILES[DEFAULT_PROFILE]["image"])
        branches.append(group)
    plan >> inspect >> chunk >> route(plan) >> branches >> publish_summary(plan)
    [inspect, chunk, *branches] >> quarantine_bad_input()
