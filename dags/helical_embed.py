"""
### Embed an .h5ad's cells with a pretrained model: embeddings, Leiden clusters and a UMAP, no labels needed

Trigger from the UI (the form below is validated). Most files carry no cell types: this runs a pretrained
model (any model `helical-runner info` lists: Geneformer's nine, scGPT, GenePT, Nicheformer) over every cell.
The run checks its input and that a live Celery worker serves its profile's queue, then runs three
`helical-runner` containers through the docker-socket-proxy:

0. **inspect** the .h5ad (where its counts and gene ids are, how many genes the model knows);
1. **chunk** it into row chunks under `chunks/<dataset>/` (on queue `cpu`, as in helical_finetune);
2. **embed** the chunks on the profile's queue → `runs/<run_id>/embed/`: `embeddings.h5ad` (every cell's obs,
   `obsm['X_<family>']`, `obs['leiden']`, `obsm['X_umap']`; open it with `anndata.read_h5ad`), `umap.png`
   coloured by cluster and by each column named in *Colour by*, `report.json` and `report.html`;

and **publishes** a summary (page URLs, cells, clusters) to `runs/<run_id>/summary.json`. A bad input fails
at once, as in helical_finetune.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import DAG

from helical_lib import forms, models, profiles
from helical_lib.pipeline import DAG_SETTINGS, runner_pipeline

DEFAULT_PROFILE, PROFILES = profiles.load_all()
STEPS = ("embed",)  # on the profile's queue

PARAMS = {
    "data": forms.data("embed"),
    "model": forms.model(models.DEFAULT_MODEL, models.embeddable(), "Pretrained model to embed the cells with"),
    "profile": forms.profile(DEFAULT_PROFILE, PROFILES),
    "color": forms.color(),
    **forms.runtime_choices(),
    **forms.input_choices(),
}

with DAG(dag_id=Path(__file__).stem, doc_md=__doc__, params=PARAMS, **DAG_SETTINGS) as dag:
    runner_pipeline(STEPS, summarise="summarise_embedding", image=PROFILES[DEFAULT_PROFILE]["image"])
