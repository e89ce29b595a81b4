"""scGPT (helical's `scGPT_CP`) as a model family: `embed`, and `finetune`/`predict` through the shared loop.

Files: files.py (helical's cache layout, architecture read from the checkpoint, every weight loaded).
Tokens: tokenizer.py (helical's gene filtering, binning and sampling, per chunk). Network, head and saved
folders: network.py. Embeddings: helical's `TransformerModel._encode`, then the mean of the gene positions'
outputs (not `<cls>`), L2-normalised, as helical's `get_embeddings` with its default emb_mode="cell". One
difference, by design: helical pads each batch of 24 cells to its longest cell and averages the padding
positions' outputs in as well, so its embedding of a cell depends on the cells batched with it; here only
the cell's own genes are averaged (helical with batch_size=1 gives the same numbers:
tests/runner/test_embed_scgpt.py). The classifier pools the same way, without the L2 norm (helical's
scGPTFineTuningModel feeds the plain mean to its head).
"""

from __future__ import annotations

import functools
import json

import numpy as np

from helical_runner.models import ModelRow
from helical_runner.models.scgpt import files

FAMILY = "scgpt"


def names() -> list[str]:
    return [files.NAME]


def describe(name: str) -> ModelRow:
    missing = files.missing_files()
    width = _checkpoint()[0].d_model if not missing else 512  # scGPTConfig's embsize until the checkpoint says
    return ModelRow(family=FAMILY, name=name, embedding_size=width, input_size=files.MAX_LENGTH, fine_tunes=True,
                    cached=not missing, missing=missing)


def details(name: str) -> dict:
    """What `info --model` adds for a cached scGPT: the architecture its checkpoint describes."""
    arch, parameters = _checkpoint()
    return {"version": files.NAME, "layers": arch.nlayers, "hidden_size": arch.d_model, "attention_heads": arch.nhead,
            "vocabulary_size": arch.ntoken, "special_tokens": False, "parameters": parameters,
            "model_dir": str(files.model_dir())}


def _checkpoint() -> tuple[files.Architecture, int]:
    """(architecture, parameter count) of the cached checkpoint; `info --model` asks twice (describe, details)
    and reads it once."""
    path = files.model_dir() / "best_model.pt"
    stat = path.stat()
    return _read_checkpoint(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _read_checkpoint(path, mtime_ns: int, size: int) -> tuple[files.Architecture, int]:
    state = files.read_state(path)
    return files.architecture(state, path.parent), sum(t.numel() for t in state.values())


def vocabulary(name: str, dataset) -> dict | None:
    """How the file's genes meet scGPT's vocabulary (InputError when none does); None when vocab.json is
    not in the cache yet."""
    from helical_runner.models.scgpt.tokenizer import ScgptTokenizer

    vocab_file = files.model_dir() / "vocab.json"
    if not vocab_file.is_file():
        return None
    return _gene_summary(ScgptTokenizer(json.loads(vocab_file.read_text())), name, dataset)


def _gene_summary(tokenizer, name: str, dataset) -> dict:
    from helical_runner.errors import InputError

    _, tokens, collapsed = tokenizer.columns(dataset.gene_ids)
    if len(tokens) == 0:
        raise InputError(f"{dataset.name}: none of its {len(dataset.gene_ids)} genes is in {name}'s vocabulary "
                         "(scGPT reads gene symbols: give --gene-column with symbols, e.g. feature_name in "
                         "CELLxGENE files)")
    return {"in_file": len(dataset.gene_ids), "in_vocabulary": len(tokens) + collapsed, "tokens": len(tokens),
            "collapsed": collapsed}


class ScgptBase:
    """scGPT's files, tokenizer and fresh classifiers (models.BaseModel)."""

    family = FAMILY
    special_token = False

    def __init__(self, folder, max_input_size: int | None = None):
        from helical_runner.models.scgpt.tokenizer import ScgptTokenizer

        self.folder = folder
        self.name = self.version = files.NAME
        self.input_size = min(max_input_size or files.MAX_LENGTH, files.MAX_LENGTH)
        self.tokenizer = ScgptTokenizer(json.loads((folder / "vocab.json").read_text()), self.input_size)

    def genes(self, dataset) -> dict:
        return _gene_summary(self.tokenizer, self.name, dataset)

    def tokenize(self, chunk):
        return self.tokenizer.tokenize(chunk.X, chunk.gene_ids, chunk.obs.index)

    def classifier(self, n_classes: int, dropout: float | None = None):
        """helical's TransformerModel with every checkpoint weight (files.load_network) + the head
        (dropout 0.02 unless given, as helical's ClassificationHead)."""
        from helical_runner.models.scgpt.network import ScgptClassifier

        return ScgptClassifier(files.load_network(self.folder), n_classes, 0.02 if dropout is None else dropout)

    def save(self, net, meta, out_dir) -> None:
        from helical_runner.models.scgpt import network

        nhead = net.network.transformer_encoder.layers[0].self_attn.num_heads
        network.save(net, meta, self.folder, nhead, out_dir)


def base(name: str, max_input_size: int | None = None, fetch_missing: bool = True) -> ScgptBase:
    return ScgptBase(files.locate(fetch_missing=fetch_missing), max_input_size)


def load_saved(model_dir, meta):
    """(classifier in eval mode, ScgptBase reading the vocabulary saved beside the weights)."""
    from helical_runner.models.classifier import read_head

    saved = ScgptBase(model_dir, meta.input_size)
    return read_head(saved.classifier(len(meta.labels), meta.dropout), model_dir), saved


class ScgptEmbedder:
    family = FAMILY
    obsm_key = f"X_{FAMILY}"

    def __init__(self, name: str, precision):
        self.base = base(name)
        self.name = name
        self.precision = precision
        self.core = self.base.classifier(1).to(precision.device).eval()  # the head is not used
        self.hidden_size = self.core.network.d_model

    def genes(self, dataset) -> dict:
        return self.base.genes(dataset)

    def tokenize(self, chunk):
        return self.base.tokenize(chunk)

    def embed(self, tokens, batch_size: int) -> np.ndarray:
        from helical_runner.training.loop import encode

        out = np.zeros((len(tokens.input_ids), self.hidden_size), dtype=np.float32)
        for batch, pooled in encode(self.core, tokens.input_ids, batch_size, self.precision):
            out[batch] = pooled.float().cpu().numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)  # helical's _normalize_embeddings


def load(name: str, precision) -> ScgptEmbedder:
    return ScgptEmbedder(name, precision)
