"""
### Fine-tune Geneformer on an .h5ad and annotate its cells

Trigger from the UI (the form below is validated) or let `helical_ingest` trigger it for uploads to
`incoming/train/<label column>/` and plain `incoming/` (README, "Uploads and annotation"). The run checks its
input (and that a live Celery worker serves its profile's queue: if none does, it fails at once saying how to
start one), then runs four `helical-runner` containers through the docker-socket-proxy:

0. **inspect** the .h5ad: the task log shows where its counts and gene ids are, how many genes the model
   knows, its label columns, and stops the run in seconds if the file can't be used;
1. **chunk** the .h5ad into row chunks under `chunks/<dataset>/` (streamed, never loaded whole);
   inspect and chunk always run on queue `cpu`: they need no GPU, so they never hold a GPU worker's slot;
2. **finetune** a cell-type classifier on the streamed chunks → `runs/<run_id>/` (model, checkpoint,
   report.json, report.html, pictures), on the Celery queue of the resource profile (`config/profiles.yaml`);
   with MLflow (`MLFLOW_TRACKING_URI`) the run is tracked there and the model registered as a new version of
   *Registered model* (default `helical-<label column>`); *Promote* moves its alias `champion` (auto: when
   there is no champion yet or the new macro-F1 beats the champion's);
3. **predict** cell types with the new model (same queue) → `runs/<run_id>/predict/` (predictions.h5ad with
   the cells' obs, predictions and embeddings; predictions.csv, umap.png, report.json, report.html);

and **publishes** a summary (report page URLs, accuracy, macro-F1, cells/s, the MLflow run, the registered
model version and whether it became champion) to `runs/<run_id>/summary.json`.

With *Annotate if unlabelled* (`or_annotate`, set by `helical_ingest` for plain `incoming/<name>.h5ad`
uploads) a file without the label column is no bad input: inspect says so (`labelled: false` in
`runs/<run_id>/inspect.json`), **check_labels** skips chunk, finetune and predict, and **annotate_instead**
triggers `helical_annotate` on the same file and ETag (run id `<this run id>__annotate`); the summary names it.
Containers that fail are kept for debugging (`docker ps -a --filter label=app=helical-runner`); a bad
input (runner exit code 65, or an upload over the profile's size cap or deleted before its run) fails at
once instead of being retried, and the upload is moved to `quarantine/<name>` with the one-line reason in
`quarantine/<name>.error.json`. A container the kernel killed at the profile's memory cap also fails at
once (the log names the next larger profile); other kills are retried and resume from the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import DAG, Param

from helical_lib import forms, models, profiles
from helical_lib.pipeline import DAG_SETTINGS, runner_pipeline

DEFAULT_PROFILE, PROFILES = profiles.load_all()
STEPS = ("finetune", "predict")  # on the profile's queue


PARAMS = {
    "data": forms.data("fine-tune on"),
    "label_column": Param("cell_type", type="string", title="Label column", minLength=1, maxLength=200,
                          description="obs column with the cell-type labels"),
    "model": forms.model(models.DEFAULT_MODEL, models.fine_tunable(), "Model to start from"),
    "profile": forms.profile(DEFAULT_PROFILE, PROFILES),
    "epochs": forms.optional("integer", "Epochs", "Passes over the data (runner default 1)", minimum=1, maximum=1000),
    **forms.runtime_choices(),
    "tokens_per_batch": forms.optional("integer", "Tokens per batch", "Instead of a batch size: fill each batch "
                                       "with similar-length cells up to this many padded tokens (e.g. 16384)",
                                       minimum=1, maximum=1_048_576),
    "lr": forms.optional("number", "Learning rate", "Peak learning rate (runner default 1e-4)", exclusiveMinimum=0,
                         maximum=1),
    "no_embeddings": Param(False, type="boolean", title="Skip embeddings",
                           description="Leave the cell embeddings (obsm['X_geneformer'] in predictions.h5ad) "
                                       "and the UMAP out of the predict step"),
    "registered_model": forms.registered_model(None, "MLflow registered model the fine-tuned model becomes a "
                                               "new version of (default helical-<label column>)"),
    "promote": Param("auto", type="string", title="Promote", enum=["auto", "always", "never"],
                     description="Move the registered model's alias 'champion' to the new version: auto when there "
                                 "is no champion yet or the new macro-F1 beats the champion's, always, or never"),
    "or_annotate": Param(False, type="boolean", title="Annotate if unlabelled",
                         description="When the file has no such label column, hand it to helical_annotate (the "
                                     "registered model's champion annotates it) instead of failing"),
    **forms.input_choices(),
}

with DAG(dag_id=Path(__file__).stem, doc_md=__doc__, params=PARAMS, **DAG_SETTINGS) as dag:
    runner_pipeline(STEPS, summarise="summarise", image=PROFILES[DEFAULT_PROFILE]["image"], annotate_unlabelled=True)
