"""Geneformer (every helical name: v1, v2 and v3 dictionaries) as a model family.

Files come from helical's cache layout through model_files.locate (never helical's downloader when they are
there), tokens from tokenizer.GeneformerTokenizer (helical's rank-value tokenization), embeddings from
model.GeneformerClassifier.embed: the last layer mean-pooled over gene tokens, as helical's
`Geneformer.get_embeddings` with its defaults (emb_mode="cell", emb_layer=-1).
"""

from __future__ import annotations

import json

import numpy as np

from helical_runner.errors import InputError
from helical_runner.models import ModelRow

FAMILY = "geneformer"


def _config():
    from helical_runner.models.geneformer.files import config_class

    return config_class()()


def names() -> list[str]:
    return list(_config().model_map)


def describe(name: str) -> ModelRow:
    from helical_runner.models.geneformer.files import locate, missing_files

    missing = [str(path) for path in missing_files(name)]
    facts = _config().model_map[name]
    width = int(facts["embsize"])
    if not missing:  # a stand-in's width is its own
        files = locate(name, fetch_missing=False)
        width = int(json.loads((files.model_dir / "config.json").read_text()).get("hidden_size", width))
    return ModelRow(family=FAMILY, name=name, embedding_size=width, input_size=int(facts["input_size"]),
                    fine_tunes=True, cached=not missing, missing=missing)


def details(name: str) -> dict:
    """What `info --model` adds for a cached Geneformer: its BERT config and parameter count."""
    from helical_runner.commands.info import count_parameters
    from helical_runner.models.geneformer.files import locate

    files = locate(name, fetch_missing=False)
    config = json.loads((files.model_dir / "config.json").read_text())
    weights = next((p for p in files.model_dir.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin")), None)
    return {"version": files.version, "layers": config.get("num_hidden_layers"),
            "hidden_size": config.get("hidden_size"), "attention_heads": config.get("num_attention_heads"),
            "vocabulary_size": config.get("vocab_size"), "special_tokens": files.special_token,
            "parameters": count_parameters(weights) if weights else None, "model_dir": str(files.model_dir)}


def vocabulary(name: str, dataset) -> dict | None:
    """How the file's genes meet the model's vocabulary (InputError when none does); None when the
    model's dictionaries are not in the cache yet."""
    from helical_runner.models.geneformer.files import locate
    from helical_runner.models.geneformer.tokenizer import GeneformerTokenizer

    files = locate(name, fetch_missing=False)
    if not files.token_dictionary.is_file():
        return None
    return _gene_summary(GeneformerTokenizer(files), name, dataset)


def _gene_summary(tokenizer, name: str, dataset) -> dict:
    try:
        known = tokenizer.known_genes(dataset.gene_ids)
    except InputError as exc:
        raise InputError(f"{dataset.name}: {exc}") from None
    if known == 0:
        raise InputError(f"{dataset.name}: none of its {len(dataset.gene_ids)} genes is in {name}'s vocabulary "
                         "(Geneformer needs human genes: Ensembl ids in var['ensembl_id'] or as var names, or "
                         "symbols it can map)")
    columns = tokenizer.columns(dataset.gene_ids)
    return {"in_file": len(dataset.gene_ids), "in_vocabulary": columns.n_genes + columns.collapsed,
            "tokens": columns.n_genes, "collapsed": columns.collapsed}


class GeneformerBase:
    """A Geneformer's files, tokenizer and fresh classifiers (models.BaseModel)."""

    family = FAMILY

    def __init__(self, files, max_input_size: int | None = None):
        from helical_runner.models.geneformer.tokenizer import GeneformerTokenizer

        self.files = files
        self.name, self.version, self.special_token = files.name, files.version, files.special_token
        self.tokenizer = GeneformerTokenizer(files, max_input_size)
        self.input_size = min(max_input_size or files.input_size, files.input_size)

    def genes(self, dataset) -> dict:
        return _gene_summary(self.tokenizer, self.name, dataset)

    def tokenize(self, chunk):
        # helical normalises by obs['n_counts'] when the file has it (else the cell's total)
        n_counts = chunk.obs["n_counts"].to_numpy() if "n_counts" in chunk.obs.columns else None
        return self.tokenizer.tokenize(chunk.X, chunk.gene_ids, chunk.obs.index, n_counts)

    def classifier(self, n_classes: int, dropout: float | None = None):
        """Encoder + head; the head's dropout follows the model's own unless given (Geneformer's 0.02, which
        is also helical's ClassificationHead default)."""
        from helical_runner.models.geneformer.network import GeneformerClassifier, load_encoder

        encoder = load_encoder(self.files.model_dir)
        return GeneformerClassifier(encoder, n_classes, self.special_token,
                                    dropout=encoder.config.hidden_dropout_prob if dropout is None else dropout,
                                    pad_id=self.tokenizer.pad_id)

    def save(self, net, meta, out_dir) -> None:
        from helical_runner.models.geneformer import network

        network.save(net, meta, self.files, out_dir)


def base(name: str, max_input_size: int | None = None, fetch_missing: bool = True) -> GeneformerBase:
    from helical_runner.models.geneformer.files import locate

    return GeneformerBase(locate(name, fetch_missing=fetch_missing), max_input_size)


def load_saved(model_dir, meta):
    """(classifier in eval mode, GeneformerBase reading the dictionaries saved beside the weights)."""
    from helical_runner.models.classifier import read_head
    from helical_runner.models.geneformer.network import files_of_saved_model

    saved = GeneformerBase(files_of_saved_model(model_dir, meta), meta.input_size)
    return read_head(saved.classifier(len(meta.labels), meta.dropout), model_dir), saved


class GeneformerEmbedder:
    family = FAMILY
    obsm_key = f"X_{FAMILY}"

    def __init__(self, name: str, precision):
        self.base = base(name)
        self.name = self.base.name
        self.precision = precision
        # no head is used: the classifier's pooling is the embedding (n_classes is a placeholder)
        self.core = self.base.classifier(1).to(precision.device).eval()
        self.hidden_size = self.core.classifier.in_features

    def genes(self, dataset) -> dict:
        return self.base.genes(dataset)

    def tokenize(self, chunk):
        return self.base.tokenize(chunk)

    def embed(self, tokens, batch_size: int) -> np.ndarray:
        from helical_runner.training.loop import encode

        out = np.zeros((len(tokens.input_ids), self.hidden_size), dtype=np.float32)
        for batch, pooled in encode(self.core, tokens.input_ids, batch_size, self.precision):
            out[batch] = pooled.float().cpu().numpy()
        return out


def load(name: str, precision) -> GeneformerEmbedder:
    return GeneformerEmbedder(name, precision)
