"""Geneformer encoder + classification head, and the saved-model format `predict` and helical load.

helical's `GeneformerFineTuningModel` runs the whole `BertForMaskedLM` and throws away its
[batch, seq, vocabulary] logits; the classifier only needs the encoder's last hidden state, so we load
`BertModel` alone (identical hidden states, a fraction of the compute) with PyTorch's SDPA attention.
Pooling and head match helical's defaults: mean over gene tokens (no <cls>/<eos>), dropout 0.02, linear.

A saved model is a folder:
  config.json, model.safetensors   the fine-tuned encoder as a BertForMaskedLM (helical's model layout,
                                   so `GeneformerConfig`'s model folder can point at it)
  classifier.safetensors           the head           } models/classifier.py, the same
  classifier.json                  labels, settings   } for every family
  token_dictionary.json, gene_median_dictionary.json, ensembl_mapping_dict.json  (the tokenizer's files)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from helical_runner.errors import InputError
from helical_runner.models.classifier import ClassifierMeta, read_head, read_meta, write_head
from helical_runner.models.geneformer.files import ModelFiles
from helical_runner.training.batching import collate

log = logging.getLogger(__name__)

DICTIONARY_FILES = ("token_dictionary.json", "gene_median_dictionary.json", "ensembl_mapping_dict.json")


def load_encoder(model_dir: Path):
    """The BERT encoder of a Geneformer checkpoint (BertForMaskedLM weights), with SDPA attention."""
    from transformers import BertModel

    try:
        return BertModel.from_pretrained(model_dir, attn_implementation="sdpa", add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"model folder '{model_dir}' does not hold a loadable Geneformer: {str(exc).splitlines()[0]}") from None


class GeneformerClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int, special_token: bool, dropout: float = 0.02,
                 pad_id: int = 0):
        super().__init__()
        self.encoder = encoder
        self.special_token = special_token
        self.pad_id = pad_id  # the token dictionary's <pad> (0 in every Geneformer dictionary)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_classes)

    def collate(self, cells: list, device: torch.device):
        """The inputs of forward/embed for a batch of tokenized cells (batching.collate)."""
        return collate(cells, self.pad_id, device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """attention_mask: batching.collate's [batch, 1, 1, seq] key-padding mask, or None without padding."""
        return self.classifier(self.dropout(self.embed(input_ids, attention_mask, lengths)))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """Cell embeddings [batch, hidden]: the last layer's states mean-pooled over gene tokens, as
        helical's `get_embeddings` with its defaults (emb_mode="cell", emb_layer=-1) computes them."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden, lengths)

    def pool(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean over gene tokens: positions [1, length-1) with <cls>/<eos>, else [0, length).

        helical's `_compute_embeddings_depending_on_mode` (geneformer_utils.py) drops position 0 and
        takes 2 off the length when the token dictionary has <cls> and <eos>, then averages the rest."""
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        first, trim = (1, 1) if self.special_token else (0, 0)
        mask = (positions >= first) & (positions < (lengths - trim).unsqueeze(1))
        summed = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)

    def set_attention_dropout(self, rate: float) -> None:
        """Dropout on attention probabilities (transformers' SDPA path reads each layer's `dropout.p`)."""
        for layer in self.encoder.encoder.layer:
            layer.attention.self.dropout.p = rate

    def set_hidden_dropout(self, rate: float) -> None:
        """Dropout on the embeddings and on every attention and feed-forward output (BERT's hidden_dropout_prob)."""
        self.encoder.embeddings.dropout.p = rate
        for layer in self.encoder.encoder.layer:
            layer.attention.output.dropout.p = rate
            layer.output.dropout.p = rate

    def freeze_layers(self, n: int) -> None:
        """Keep the first n encoder layers fixed (helical's `freeze_layers`)."""
        for layer in self.encoder.encoder.layer[:n]:
            for param in layer.parameters():
                param.requires_grad = False


def save(model: GeneformerClassifier, meta: ClassifierMeta, base: ModelFiles, out_dir: Path) -> None:
    """Write the model folder (see module docstring); the encoder goes back into helical's MLM layout."""
    from transformers import BertForMaskedLM

    out_dir.mkdir(parents=True, exist_ok=True)
    mlm = BertForMaskedLM.from_pretrained(base.model_dir)
    mlm.bert.load_state_dict(model.encoder.state_dict(), strict=False)
    mlm.save_pretrained(out_dir)
    write_head(model, meta, out_dir)
    for src in (base.token_dictionary, base.gene_median_dictionary, base.ensembl_mapping):
        shutil.copyfile(src, out_dir / src.name)


def load(model_dir: Path) -> tuple[GeneformerClassifier, ClassifierMeta]:
    meta = read_meta(model_dir)
    model = GeneformerClassifier(load_encoder(model_dir), len(meta.labels), meta.special_token, meta.dropout)
    return read_head(model, model_dir), meta


def files_of_saved_model(model_dir: Path, meta: ClassifierMeta) -> ModelFiles:
    """The saved folder as a ModelFiles, so the tokenizer reads the dictionaries saved beside the weights."""
    return ModelFiles(name=meta.base_model, version=meta.model_version, input_size=meta.input_size,
                      special_token=meta.special_token, model_dir=model_dir,
                      token_dictionary=model_dir / DICTIONARY_FILES[0],
                      gene_median_dictionary=model_dir / DICTIONARY_FILES[1],
                      ensembl_mapping=model_dir / DICTIONARY_FILES[2])
