"""Geneformer (every helical name: v1, v2 and v3 dictionaries) as a model family.

Files come from helical's cache layout through model_files.locate (never helical's downloader when they are
there), tokens from tokenizer.GeneformerTokenizer (helical's rank-value tokenization), embeddings from
model.GeneformerClassifier.embed: the last layer mean-pooled over gene tokens, as helical's
`Geneformer.get_embeddings` with its defaults (emb_mode="cell", emb_layer=-1).
"""

from __future__ import annotations

import json

import numpy as np

from helical_runner.models import ModelRow

FAMILY = "geneformer"


def _config():
    from helical.models.geneformer.geneformer_config import GeneformerConfig

    return GeneformerConfig()


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
    from helical_runner.commands.finetune import check_vocabulary, gene_summary

    check_vocabulary(dataset, tokenizer, name)
    return gene_summary(dataset, tokenizer)


class GeneformerEmbedder:
    family = FAMILY
    obsm_key = f"X_{FAMILY}"

    def __init__(self, name: str, precision):
        from helical_runner.models.geneformer.network import GeneformerClassifier, load_encoder
        from helical_runner.models.geneformer.files import locate
        from helical_runner.models.geneformer.tokenizer import GeneformerTokenizer

        files = locate(name)
        self.name = files.name
        self.precision = precision
        self.tokenizer = GeneformerTokenizer(files, files.input_size)
        encoder = load_encoder(files.model_dir)
        self.hidden_size = int(encoder.config.hidden_size)
        # no head is used: the classifier's pooling is the embedding (n_classes is a placeholder)
        self.core = GeneformerClassifier(encoder, 1, files.special_token).to(precision.device).eval()

    def genes(self, dataset) -> dict:
        return _gene_summary(self.tokenizer, self.name, dataset)

    def tokenize(self, chunk):
        # helical normalises by obs['n_counts'] when the file has it (else the cell's total), as finetune does
        n_counts = chunk.obs["n_counts"].to_numpy() if "n_counts" in chunk.obs.columns else None
        return self.tokenizer.tokenize(chunk.X, chunk.gene_ids, chunk.obs.index, n_counts)

    def embed(self, tokens, batch_size: int) -> np.ndarray:
        from helical_runner.training.loop import encode

        out = np.zeros((len(tokens.input_ids), self.hidden_size), dtype=np.float32)
        for batch, pooled in encode(self.core, tokens.input_ids, batch_size, self.tokenizer.pad_id, self.precision):
            out[batch] = pooled.float().cpu().numpy()
        return out


def load(name: str, precision) -> GeneformerEmbedder:
    return GeneformerEmbedder(name, precision)
