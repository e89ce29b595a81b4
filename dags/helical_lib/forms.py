"""Form fields the DAGs share (Airflow Params: the UI's trigger form and the REST API both validate them)."""

from __future__ import annotations

from airflow.sdk import Param

from helical_lib.registry import NAME_PATTERN

DATA_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+|/data/.+)\.h5ad$"


def optional(type_: str, title: str, description: str, **schema) -> Param:
    """A form field left empty by default: the profile's (or the runner's) value then applies."""
    return Param(None, type=["null", type_], title=title, description=description, **schema)


def data(what: str) -> Param:
    return Param("s3://helical/incoming/example.h5ad", type="string", title="Data URL",
                 description=f"The .h5ad to {what}: s3://bucket/key, or a path under /data (the host data folder)",
                 pattern=DATA_PATTERN)


def model(default: str, choices: list[str], what: str) -> Param:
    return Param(default, type="string", title="Model", enum=choices,
                 description=f"{what} (helical's name; `helical-runner info` lists them and whether the runner "
                             "image's cache holds their files)")


def profile(default: str, names) -> Param:
    return Param(default, type="string", title="Resource profile", enum=sorted(names),
                 description="Image, queue, device, memory cap and defaults from config/profiles.yaml")


def color() -> Param:
    return Param([], type="array", title="Colour by", items={"type": "string", "minLength": 1, "maxLength": 200},
                 maxItems=8, description="obs columns to colour umap.png by, beside the clusters (e.g. donor_id)")


def runtime_choices() -> dict[str, Param]:
    """Precision, batch size and chunk size: each overrides the profile when given."""
    return {
        "precision": optional("string", "Precision", "Overrides the profile's precision",
                              enum=[None, "fp32", "bf16", "fp16"]),
        "batch_size": optional("integer", "Batch size", "Cells per step (overrides the profile)", minimum=1,
                               maximum=4096),
        "cells_per_chunk": optional("integer", "Cells per chunk", "Rows per streamed chunk (overrides the profile)",
                                    minimum=1, maximum=1_000_000),
    }


def input_choices() -> dict[str, Param]:
    """Where the counts and gene ids are (default: found, see the inspect step's log), and the ETag."""
    return {
        "counts": optional("string", "Counts", "Where the raw counts are: X, raw or layers/NAME (default: found, "
                           "see the inspect step's log)", pattern=r"^(X|raw|raw/X|layers/.+)$", maxLength=200),
        "gene_column": optional("string", "Gene column", "var column with the gene ids or symbols, or 'index' "
                                "(default: found)", maxLength=200),
        "etag": optional("string", "ETag", "Set by helical_ingest: the upload this run was triggered for; the run "
                                           "fails if the object has changed since", maxLength=200),
    }


def registered_model(default: str | None, description: str) -> Param:
    """A registered model's name in MLflow (letters, digits, '-', '_', '.'; as the runner checks it)."""
    return Param(default, type="string" if default else ["null", "string"], title="Registered model",
                 description=description, pattern=NAME_PATTERN, maxLength=200)
