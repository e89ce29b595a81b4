"""What every family's fine-tuned model folder shares: classifier.json and the head's weights.

A fine-tuned model folder holds the family's own files (its encoder in helical's layout, its vocabulary)
plus, whatever the family:
  classifier.json          ClassifierMeta: labels, label column, base model, tokenization settings, family
  classifier.safetensors   the head (a linear layer on the pooled cell embedding)
`predict` reads classifier.json first and asks the family it names to load the rest (load_saved).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from helical_runner.errors import InputError

HEAD_FILE = "classifier.safetensors"
META_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierMeta:
    labels: list[str]  # class index -> label
    label_column: str
    base_model: str  # helical's model name
    model_version: str
    input_size: int  # longest input (tokens) a cell was given
    special_token: bool = False  # Geneformer: <cls>/<eos> around the genes
    dropout: float = 0.02  # the head's (helical's ClassificationHead default)
    gene_column: str = ""  # var column of the training file's gene ids ('' = var names): predict looks there first
    counts: str = ""  # where the training file's counts were (X, raw/X, layers/NAME), for the report
    family: str = "geneformer"  # models.<family> loads the folder (folders written before scGPT fine-tuned have none)


def write_head(model, meta: ClassifierMeta, out_dir: Path) -> None:
    """classifier.safetensors (the head of `model`, any family's classifier) and classifier.json."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    head = {f"classifier.{k}": v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
    save_file(head, out_dir / HEAD_FILE)
    (out_dir / META_FILE).write_text(json.dumps(asdict(meta), indent=1))


def read_meta(model_dir: Path) -> ClassifierMeta:
    """classifier.json of a fine-tuned model folder; InputError naming the folder when it isn't one."""
    path = model_dir / META_FILE
    if not path.is_file():
        raise InputError(f"'{model_dir}' is not a fine-tuned model folder (no {META_FILE})")
    try:
        return ClassifierMeta(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path} is not a classifier description this runner reads ({exc})") from None


def read_head(model, model_dir: Path):
    """Load classifier.safetensors into `model.classifier`; returns the model in eval mode."""
    from safetensors.torch import load_file

    head = load_file(model_dir / HEAD_FILE)
    model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in head.items()})
    return model.eval()


def load_saved(model_dir: Path):
    """(classifier network in eval mode, the family's base model for tokens and genes, ClassifierMeta) of a
    fine-tuned model folder, whichever family wrote it."""
    from helical_runner.models import family_named

    meta = read_meta(model_dir)
    net, base = family_named(meta.family).load_saved(model_dir, meta)
    return net, base, meta
