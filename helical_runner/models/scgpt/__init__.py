"""scGPT (helical's `scGPT_CP`) as a model family: `embed` only for now (no fine-tuning head yet).

Files: files.py (helical's cache layout, architecture read from the checkpoint, every weight loaded).
Tokens: tokenizer.py (helical's gene filtering, binning and sampling, per chunk). Embeddings: helical's
`TransformerModel._encode`, then the mean of the gene positions' outputs (not `<cls>`), L2-normalised, as
helical's `get_embeddings` with its default emb_mode="cell". One difference, by design: helical pads each
batch of 24 cells to its longest cell and averages the padding positions' outputs in as well, so its
embedding of a cell depends on the cells batched with it; here only the cell's own genes are averaged
(helical with batch_size=1 gives the same numbers: tests/runner/test_embed_scgpt.py).
"""

from __future__ import annotations

import json

import numpy as np

from helical_runner.models import ModelRow
from helical_runner.models.scgpt import files

FAMILY = "scgpt"


def names() -> list[str]:
    return [files.NAME]


def describe(name: str) -> ModelRow:
    missing = files.missing_files()
    width = 512  # scGPTConfig's embsize, until the checkpoint says otherwise
    if not missing:
        state = files.read_state(files.model_dir() / "best_model.pt")
        width = files.architecture(state, files.model_dir()).d_model
    return ModelRow(family=FAMILY, name=name, embedding_size=width, input_size=files.MAX_LENGTH, fine_tunes=False,
                    cached=not missing, missing=missing)


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


class ScgptEmbedder:
    family = FAMILY
    obsm_key = f"X_{FAMILY}"

    def __init__(self, name: str, precision):
        from helical_runner.models.scgpt.tokenizer import ScgptTokenizer

        folder = files.locate()
        self.name = name
        self.precision = precision
        self.network, vocab, arch = files.load_network(folder)
        self.network.to(precision.device)
        self.hidden_size = arch.d_model
        self.tokenizer = ScgptTokenizer(vocab)

    def genes(self, dataset) -> dict:
        return _gene_summary(self.tokenizer, self.name, dataset)

    def tokenize(self, chunk):
        return self.tokenizer.tokenize(chunk.X, chunk.gene_ids, chunk.obs.index)

    def embed(self, tokens, batch_size: int) -> np.ndarray:
        import torch

        device = self.precision.device
        out = np.zeros((len(tokens.input_ids), self.hidden_size), dtype=np.float32)
        order = np.argsort(tokens.lengths, kind="stable")  # similar lengths together: less padding
        self.network.eval()
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                longest = int(tokens.lengths[batch].max())
                genes = torch.full((len(batch), longest), self.tokenizer.pad_id, dtype=torch.long)
                values = torch.full((len(batch), longest), float(files.PAD_VALUE), dtype=torch.float32)
                for row, cell in enumerate(batch):
                    n = len(tokens.input_ids[cell])
                    genes[row, :n] = torch.from_numpy(tokens.input_ids[cell])
                    values[row, :n] = torch.from_numpy(tokens.values[cell])
                genes, values = genes.to(device), values.to(device)
                padding = genes.eq(self.tokenizer.pad_id)
                with self.precision.autocast():
                    hidden = self.network._encode(genes, values, src_key_padding_mask=padding)
                gene_positions = (~padding).float()
                gene_positions[:, 0] = 0.0  # not <cls>
                pooled = (hidden.float() * gene_positions.unsqueeze(-1)).sum(1) / gene_positions.sum(1, keepdim=True)
                out[batch] = pooled.cpu().numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)  # helical's _normalize_embeddings


def load(name: str, precision) -> ScgptEmbedder:
    return ScgptEmbedder(name, precision)
