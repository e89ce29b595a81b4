"""
### Annotate an .h5ad's cells with a registered model: cell types and confidence, embeddings, clusters, a UMAP

Trigger from the UI (the form below is validated), or let `helical_ingest` trigger it for uploads to
`incoming/annotate/` and for plain `incoming/` uploads without a `cell_type` column (README, "Uploads and
annotation"). It never needs a label column. The run checks its input and that a live Celery worker serves
its profile's queue, and looks up *Registered model* in MLflow's registry (`MLFLOW_TRACKING_URI`): *Alias or
version* (default `champion`, the alias `helical_finetune` moves to its best model) is resolved once, to
`models:/NAME/VERSION`, and that version annotates the whole run even if the alias moves meanwhile. Then four
`helical-runner` containers run through the docker-socket-proxy:

0. **inspect** the .h5ad (where its counts and gene ids are; no label column required);
1. **chunk** it into row chunks under `chunks/<dataset>/` (on queue `cpu`, as in helical_finetune);
2. **embed** the chunks with *Model* (any pretrained model `helical-runner info` lists) on the profile's queue →
   `runs/<run_id>/embed/`: `embeddings.h5ad` (embeddings, `obs['leiden']`, `obsm['X_umap']`), `umap.png`;
3. **predict** the cells' types with the registered version → `runs/<run_id>/predict/`: `predictions.h5ad` (the
   cells' obs, predicted labels and confidence, the embed step's clusters and UMAP), `predictions.csv`, reports;

and **publishes** a summary (predictions.h5ad, report pages, the MLflow runs, the model URI used) to
`runs/<run_id>/summary.json`. With the form's defaults and no champion yet (no model trained on `cell_type`
has been registered), predict is skipped and the summary says "no registered model yet: embeddings and
clusters only"; a model or version named in the form that doesn't exist fails check_input at once. An
unreachable MLflow is retried. A bad input fails at once and is quarantined, as in helical_finetune.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import DAG, Param

from helical_lib import forms, models, profiles, registry
from helical_lib.pipeline import DAG_SETTINGS, runner_pipeline

DEFAULT_PROFILE, PROFILES = profiles.load_all()
STEPS = ("embed", "predict")  # on the profile's queue

PARAMS = {
    "data": forms.data("annotate"),
    "registered_model": forms.registered_model(registry.DEFAULT_NAME, "MLflow registered model whose version "
                                               "annotates the cells (helical_finetune registers helical-<label "
                                               "column>)"),
    "model_alias_or_version": Param(registry.CHAMPION, type="string", title="Alias or version",
                                    pattern=r"^[A-Za-z0-9_-]+$", maxLength=200,
                                    description="An alias of the registered model (champion: its best so far) or "
                                                "a version number"),
    "model": forms.model(models.DEFAULT_MODEL, models.embeddable(), "Pretrained model for the embeddings, clusters "
                                                                    "and UMAP"),
    "profile": forms.profile(DEFAULT_PROFILE, PROFILES),
    "color": forms.color(),
    **forms.runtime_choices(),
    **forms.input_choices(),
}

with DAG(dag_id=Path(__file__).stem, doc_md=__doc__, params=PARAMS, **DAG_SETTINGS) as dag:
    runner_pipeline(STEPS, summarise="summarise_annotation", image=PROFILES[DEFAULT_PROFILE]["image"],
                    complete_plan="annotation_plan")
