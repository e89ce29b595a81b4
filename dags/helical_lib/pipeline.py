"""The task graph the runner DAGs share, built inside their `with DAG(...)` block:

    check_input >> inspect >> chunk >> route >> on_<queue>.<steps...> >> publish_summary
    [inspect, chunk, every queue's group] >> quarantine_bad_input

inspect and chunk always run on queue `cpu` (no GPU needed, so never holding a GPU worker's slot); the
steps run in one TaskGroup per queue, and `route` picks the group of the run's profile. With
annotate_unlabelled (helical_finetune), one branch more between inspect and chunk:

    inspect >> check_labels >> [chunk, annotate_instead];  annotate_instead >> publish_summary

check_labels picks chunk, unless the run's conf says `or_annotate` and inspect found no labels: then
annotate_instead triggers helical_annotate on the same file, and chunk (with everything after it) is skipped.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import TaskGroup, TriggerRule, task

from helical_lib import profiles
from helical_lib.plan import ANNOTATE_DAG
from helical_lib.runner import CPU_QUEUE, CPU_STEPS, PLAN_TASK, RunnerOperator


# What both runner DAGs are: triggered (never scheduled), live on creation, steps retried with backoff
DAG_SETTINGS = dict(schedule=None, start_date=datetime(2026, 1, 1), catchup=False, is_paused_upon_creation=False,
                    max_active_runs=8, tags=["helical"],
                    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True})


class HandOverOperator(TriggerDagRunOperator):
    """Trigger helical_annotate on this run's input: conf and run id from the plan (helical_lib.plan.handover)."""

    def __init__(self, **kwargs):
        super().__init__(trigger_dag_id=ANNOTATE_DAG, skip_when_already_exists=True, wait_for_completion=False,
                         logical_date=None, **kwargs)

    def execute(self, context):
        from helical_lib.plan import handover

        plan = context["ti"].xcom_pull(task_ids=PLAN_TASK)
        self.trigger_run_id, self.conf = handover(plan)
        self.log.info("%s has no labels to train on: handing it to %s, run %s", plan["data"], ANNOTATE_DAG,
                      self.trigger_run_id)
        return super().execute(context)


def runner_pipeline(steps: tuple[str, ...], summarise: str, image: str, complete_plan: str | None = None,
                    annotate_unlabelled: bool = False) -> None:
    """Add the graph above to the DAG being defined; `summarise` names the helical_lib.plan function that
    writes runs/<run_id>/summary.json, `complete_plan` one that adds the DAG's own fields to the checked plan
    (`f(plan, params) -> plan`); `image` is the default profile's (each step sets its own at run time)."""

    @task(task_id=PLAN_TASK, retries=3)
    def check_input(params: dict | None = None, run_id: str | None = None) -> dict:
        """Check the input exists and fits the profile; return the run's plan (URLs, ids, settings)."""
        from helical_lib import plan as plans

        plan = plans.checked_plan(params, run_id)
        return getattr(plans, complete_plan)(plan, params) if complete_plan else plan

    @task.branch
    def check_labels(plan: dict) -> str:
        """Chunk and train, unless the run may annotate instead (or_annotate) and inspect found no labels."""
        from helical_lib import s3
        from helical_lib.plan import labelled
        from helical_lib.settings import Settings

        if not plan.get("or_annotate") or labelled(plan, s3.client(Settings.from_env().s3_conn_id)):
            return "chunk"
        return "annotate_instead"

    @task.branch
    def route(plan: dict) -> str:
        """Send the steps to the Celery queue of the run's profile."""
        return f"on_{plan['queue']}.{steps[0]}"

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def publish_summary(plan: dict) -> dict:
        """Write runs/<run_id>/summary.json: the report pages' URLs and the run's headline figures."""
        from helical_lib import plan as plans

        summary = getattr(plans, summarise)(plan)
        for name, url in summary.items():
            if name.endswith("_url") and url:
                print(f"{name.removesuffix('_url').replace('_', ' ')}: {url}")
        print(json.dumps(summary, indent=1))
        return summary

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def quarantine_bad_input(ti=None) -> dict | None:
        """If a runner step failed on a bad input, move the upload to quarantine/ beside its reason."""
        from helical_lib.plan import quarantine

        plan = ti.xcom_pull(task_ids=PLAN_TASK)  # none when check_input failed: it quarantined already
        return quarantine(plan) if plan else None

    plan = check_input()
    inspect, chunk = (RunnerOperator(task_id=step, step=step, queue=CPU_QUEUE, image=image) for step in CPU_STEPS)
    branches = []
    for queue in profiles.queues():
        with TaskGroup(f"on_{queue}") as group:
            ops = [RunnerOperator(task_id=step, step=step, queue=queue, image=image) for step in steps]
            for before, after in zip(ops, ops[1:]):
                before >> after
        branches.append(group)
    summary = publish_summary(plan)
    if annotate_unlabelled:
        hand_over = HandOverOperator(task_id="annotate_instead")
        plan >> inspect >> check_labels(plan) >> [chunk, hand_over]
        hand_over >> summary
    else:
        plan >> inspect >> chunk
    chunk >> route(plan) >> branches >> summary
    [inspect, chunk, *branches] >> quarantine_bad_input()
