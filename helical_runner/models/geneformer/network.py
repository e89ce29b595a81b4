"""Geneformer encoder + classification head, and the saved-model format `predict` and helical load.

helical's `GeneformerFineTuningModel` runs the whole `BertForMaskedLM` and throws away its
[batch, seq, vocabulary] logits; the classifier only needs the encoder's last hidden state, so we load
`BertModel` alone (identical hidden states, a fraction of the compute) with PyTorch's SDPA attention.
Pooling and head match helical's defaults: mean over gene tokens (no <cls>/<eos>), dropout 0.02, linear.

A saved model is a folder:
  config.json, model.safetensors   the fine-tuned encoder as a BertForMaskedLM (helical's model layout,
                                   so `GeneformerConfig`'s model folder can point at it)
  classifier.safetensors           the head
  classifier.json                  labels, base model, tokenization settings
  token_dictionary.json, gene_median_dictionary.json, ensembl_mapping_dict.json  (the tokenizer's files)
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helical_runner.errors import InputError
from helical_runner.models.geneformer.files import ModelFiles

log = logging.getLogger(__name__)

HEAD_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
DICTIONARY_FILES = ("token_dictionary.json", "gene_median_dictionary.json", "ensembl_mapping_dict.json")


@dataclass(frozen=True)
class ClassifierMeta:
    labels: list[str]  # class index -> label
    label_column: str
    base_model: str
    model_version: str
    input_size: int
    special_token: bool
    dropout: float = 0.02
    gene_column: str = ""  # var column the training file's gene ids came from ('' = var names): predict looks there first
    counts: str = ""  # where the training file's counts were (X, raw/X, layers/NAME), for the report


def load_encoder(model_dir: Path):
    """The BERT encoder of a Geneformer checkpoint (BertForMaskedLM weights), with SDPA attention."""
    from transformers import BertModel

    try:
        return BertModel.from_pretrained(model_dir, attn_implementation="sdpa", add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"model folder '{model_dir}' does not hold a loadable Geneformer: {str(exc).splitlines()[0]}") from None


class GeneformerClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int, special_token: bool, dropout: float = 0.02):
        super().__init__()
        self.encoder = encoder
        self.special_token = special_token
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_classes)

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
    head = {f"classifier.{k}": v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
    save_file(head, out_dir / HEAD_FILE)
    (out_dir / META_FILE).write_text(json.dumps(asdict(meta), indent=1))
    for src in (base.token_dictionary, base.gene_median_dictionary, base.ensembl_mapping):
        shutil.copyfile(src, out_dir / src.name)


def load(model_dir: Path) -> tuple[GeneformerClassifier, ClassifierMeta]:
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise InputError(f"'{model_dir}' is not a fine-tuned model folder (no {META_FILE})")
    meta = ClassifierMeta(**json.loads(meta_path.read_text()))
    model = GeneformerClassifier(load_encoder(model_dir), len(meta.labels), meta.special_token, meta.dropout)
    head = load_file(model_dir / HEAD_FILE)
    model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in head.items()})
    return model.eval(), meta


def files_of_saved_model(model_dir: Path, meta: ClassifierMeta) -> ModelFiles:
    """The saved folder as a ModelFiles, so the tokenizer reads the dictionaries saved beside the weights."""
    return ModelFiles(name=meta.base_model, version=meta.model_version, input_size=meta.input_size,
                      special_token=meta.special_token, model_dir=model_dir,
                      token_dictionary=model_dir / DICTIONARY_FILES[0],
                      gene_median_dictionary=model_dir / DICTIONARY_FILES[1],
                      ensembl_mapping=model_dir / DICTIONARY_FILES[2])
