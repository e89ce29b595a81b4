"""Model families: each turns a chunk of counts into cell embeddings behind one small interface.

A family module (geneformer.py, ...) provides:
  FAMILY                    its name, also the embeddings' key: obsm['X_<FAMILY>']
  names()                   the helical model names it runs
  describe(name)            one row of `helical-runner info` (see ModelRow)
  vocabulary(name, dataset) how the file's genes meet the model's vocabulary, for `inspect` (None: not cached)
  load(name, precision)     an Embedder (below) for that model, its files read offline from helical's cache
and, where the family fine-tunes (ModelRow.fine_tunes):
  base(name, max_input_size, fetch_missing)  a BaseModel (below): files, vocabulary, tokens, classifier
  load_saved(model_dir, meta)                (classifier, BaseModel) of a fine-tuned folder (classifier.py)

Commands ask `family_of(name)` (or `family_named` for a saved folder) and never branch on a family's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from helical_runner.errors import InputError


@dataclass(frozen=True)
class ModelRow:
    """What `helical-runner info` says of one model."""

    family: str
    name: str  # helical's model name
    embedding_size: int  # width of a cell embedding
    input_size: int  # longest input (tokens) the model reads
    fine_tunes: bool  # `finetune` / `predict` work for it
    cached: bool  # every file it needs is in helical's cache
    missing: list[str] = field(default_factory=list)  # files not in the cache (paths)
    runs_here: bool = True  # this image can run it
    why_not: str = ""  # when it can't


class Embedder(Protocol):
    family: str
    name: str
    obsm_key: str  # X_<family>
    hidden_size: int

    def genes(self, dataset) -> dict:
        """How the file's genes meet the vocabulary ({in_file, in_vocabulary, tokens, collapsed});
        InputError naming the file when none is known."""

    def tokenize(self, chunk):
        """A dataset.Chunk as token sequences (tokenizer.TokenizedCells: input_ids, kept, cell_ids, ...)."""

    def embed(self, tokens, batch_size: int) -> np.ndarray:
        """Cell embeddings [kept cells, hidden_size] float32, pooled as helical's get_embeddings pools them."""


class BaseModel(Protocol):
    """A pretrained model `finetune` trains a classifier on and `predict` tokenizes for."""

    family: str
    name: str  # helical's model name
    version: str
    input_size: int  # longest input (tokens) a cell gets
    special_token: bool

    def genes(self, dataset) -> dict:
        """As Embedder.genes."""

    def tokenize(self, chunk):
        """A dataset.Chunk as TokenizedCells whose `input_ids` are the cells the classifier's `collate` takes."""

    def classifier(self, n_classes: int):
        """A fresh network: encoder + pooling + dropout + linear head, with `collate(cells, device)` -> the
        inputs of `forward` (logits) and `embed` (pooled cell embeddings), `classifier` (the head),
        `freeze_layers(n)`, `set_attention_dropout(rate)`, `set_hidden_dropout(rate)`."""

    def save(self, net, meta, out_dir) -> None:
        """Write a fine-tuned model folder (the family's files, then classifier.write_head)."""


def _families():
    from helical_runner.models import genept, geneformer, nicheformer, scgpt

    return [geneformer, scgpt, genept, nicheformer]


# helical 3.1.4's other RNA families, and why this runner doesn't run them yet (info says so)
NOT_YET = {
    "uce": "UCE: not run by this runner yet: helical's UCE loads uce/all_tokens.torch (145,469 x 5,120 ESM2 "
           "protein embeddings, about 3 GB) whatever the model size, and asks its downloader again in every "
           "process_data (which deletes cached files when offline); an offline loader is still to write",
    "transcriptformer": "TranscriptFormer: not run by this runner yet: helical's TranscriptFormerConfig fixes "
                        "device 'cuda', so the CPU image can't run it; the GPU image's run is untested (no GPU "
                        "was lent to this project's test machines)",
    "tahoe": "Tahoe-x1: not run by this runner yet",
    "c2s": "Cell2Sentence: not run by this runner yet (a language model over gene-name sentences)",
}


def family_of(name: str):
    """The family module that runs helical model `name`; InputError listing every model otherwise."""
    for family in _families():
        if name in family.names():
            return family
    known = [n for family in _families() for n in family.names()]
    raise InputError(f"unknown model '{name}'; models this runner runs: {', '.join(known)} "
                     "(`helical-runner info` lists them with their cache state)")


def family_named(family: str):
    """The family module called `family` (a saved model's classifier.json names it); InputError otherwise."""
    for module in _families():
        if module.FAMILY == family:
            return module
    raise InputError(f"model family '{family}' is not one this runner runs "
                     f"({', '.join(module.FAMILY for module in _families())})")


def catalogue() -> list[ModelRow]:
    """Every model of every family, in the order `info` prints them."""
    return [family.describe(name) for family in _families() for name in family.names()]
