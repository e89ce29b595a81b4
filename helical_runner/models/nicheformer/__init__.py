"""Nicheformer (helical's `theislab/Nicheformer`) as a model family: `embed` only (no fine-tuning head yet).

Files: files.py (helical's cache layout; helical's NicheformerForMaskedLM with every weight loaded, helical's
NicheformerTokenizer with its reference genes). Tokens: tokenizer.py (helical's tokenizer on blocks of a
chunk's cells). Embeddings: helical's `NicheformerForMaskedLM.get_embeddings` with its defaults (last layer,
with_context=False): the encoder's outputs at positions 3 to 1,499 averaged, padding positions included, as
helical's `Nicheformer.get_embeddings` does. Every cell is 1,500 tokens and padding attends only to the
cell's own tokens, so a cell's embedding does not depend on the cells batched with it. Note helical drops the
first three positions whatever they hold: context tokens when the file has specie/assay/modality columns,
else the cell's three most expressed genes. Width: config.json's dim_model (512 for theislab/Nicheformer).
"""

from __future__ import annotations

import json

import numpy as np

from helical_runner.errors import InputError
from helical_runner.models import ModelRow
from helical_runner.models.nicheformer import files

FAMILY = "nicheformer"


def names() -> list[str]:
    return [files.NAME]


def describe(name: str) -> ModelRow:
    missing = files.missing_files()
    width, context = files.DEFAULT_WIDTH, files.DEFAULT_CONTEXT
    if not missing:
        config = files.read_config(files.model_dir())
        width = int(config.get("dim_model", width))
        context = int(config.get("context_length", context))
    return ModelRow(family=FAMILY, name=name, embedding_size=width, input_size=context, fine_tunes=False,
                    cached=not missing, missing=missing)


def vocabulary(name: str, dataset) -> dict | None:
    """How the file's genes meet Nicheformer's vocabulary (InputError when none does); None when vocab.json
    is not in the cache yet."""
    from helical_runner.models.nicheformer.tokenizer import NicheformerTokenizer, vocabulary_genes

    vocab_file = files.model_dir() / "vocab.json"
    if not vocab_file.is_file():
        return None
    try:
        vocab = json.loads(vocab_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"Nicheformer vocabulary {vocab_file} is not JSON") from None
    return _gene_summary(NicheformerTokenizer(vocabulary_genes(vocab)), name, dataset)


def _gene_summary(tokenizer, name: str, dataset) -> dict:
    combine, genes, collapsed = tokenizer.columns(dataset.gene_ids)
    if len(genes) == 0:
        raise InputError(f"{dataset.name}: none of its {len(dataset.gene_ids)} genes is in {name}'s vocabulary "
                         "(Nicheformer reads Ensembl ids; symbols are mapped through helical's gene table)")
    return {"in_file": len(dataset.gene_ids), "in_vocabulary": len(genes) + collapsed, "tokens": len(genes),
            "collapsed": collapsed}


class NicheformerEmbedder:
    family = FAMILY
    obsm_key = f"X_{FAMILY}"

    def __init__(self, name: str, precision):
        from helical_runner.models.nicheformer.tokenizer import NicheformerTokenizer, vocabulary_genes

        folder = files.locate()
        self.name = name
        self.precision = precision
        self.network = files.load_network(folder).to(precision.device)
        self.hidden_size = int(self.network.config.dim_model)
        helical_tokenizer = files.load_tokenizer(folder)
        self.tokenizer = NicheformerTokenizer(vocabulary_genes(helical_tokenizer.get_vocab()), helical_tokenizer)
        if self.tokenizer.max_length != self.network.config.context_length:
            raise InputError(f"Nicheformer in {folder}: the tokenizer makes {self.tokenizer.max_length} tokens a cell, "
                             f"the network's context_length is {self.network.config.context_length}")

    def genes(self, dataset) -> dict:
        return _gene_summary(self.tokenizer, self.name, dataset)

    def tokenize(self, chunk):
        return self.tokenizer.tokenize(chunk.X, chunk.gene_ids, chunk.obs)

    def embed(self, tokens, batch_size: int) -> np.ndarray:
        """[kept cells, dim_model] float32: helical's get_embeddings (last layer, with_context=False) per batch."""
        import torch

        device = self.precision.device
        out = np.zeros((len(tokens.input_ids), self.hidden_size), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(tokens.input_ids), batch_size):
                stop = min(start + batch_size, len(tokens.input_ids))
                ids = torch.from_numpy(np.stack(tokens.input_ids[start:stop])).long().to(device)
                mask = torch.from_numpy(np.stack(tokens.attention_mask[start:stop])).to(device)
                with self.precision.autocast():
                    pooled = self.network.get_embeddings(input_ids=ids, attention_mask=mask, layer=-1,
                                                         with_context=False)
                out[start:stop] = pooled.float().cpu().numpy()
        return out


def load(name: str, precision) -> NicheformerEmbedder:
    return NicheformerEmbedder(name, precision)
