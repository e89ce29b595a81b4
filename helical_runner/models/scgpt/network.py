"""scGPT encoder + classification head, and the fine-tuned model folder `predict` (and helical) load.

The encoder is helical's `TransformerModel` (files.load_network) run through `_encode`, as helical's
`scGPTFineTuningModel._forward` runs it; the cell embedding is the mean of the gene positions' outputs
(not <cls>), as helical's fine-tuning model and `get_embeddings` (emb_mode "cell") take it, here over the
cell's own genes only (helical also averages the padding of the batch in; see __init__'s docstring). The
head is helical's ClassificationHead: dropout (0.02) and a linear layer. The expression, <cls>-token and
MVC decoders scGPT was pretrained with are kept, frozen and unused (they stay in the saved checkpoint, so
helical's scGPT loads it), which also keeps them out of data-parallel gradient reduction.

A saved model is a folder:
  best_model.pt, vocab.json, args.json   the fine-tuned encoder in helical's scGPT_CP layout (args.json:
                                         the heads, which the weights' shapes can't tell)
  classifier.safetensors, classifier.json  the head and its labels (models/classifier.py)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helical_runner.models.classifier import write_head
from helical_runner.models.scgpt.files import PAD_VALUE

PRETRAINING_HEADS = ("decoder", "cls_decoder", "mvc_decoder")


class ScgptClassifier(nn.Module):
    def __init__(self, network: nn.Module, n_classes: int, pad_id: int, dropout: float = 0.02):
        super().__init__()
        self.network = network
        self.pad_id = pad_id
        for name in PRETRAINING_HEADS:
            for param in getattr(network, name).parameters() if hasattr(network, name) else ():
                param.requires_grad = False
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(network.d_model, n_classes)

    def collate(self, cells: list, device: torch.device):
        """(gene tokens [batch, longest] long, binned values [batch, longest] float, padding mask [batch,
        longest] True at padding) on the device, from tokenizer cells ([tokens, 2] int64 arrays)."""
        longest = max(len(c) for c in cells)
        genes = torch.full((len(cells), longest), self.pad_id, dtype=torch.long)
        values = torch.full((len(cells), longest), float(PAD_VALUE), dtype=torch.float32)
        for row, cell in enumerate(cells):
            cell = torch.from_numpy(np.asarray(cell, dtype=np.int64))
            genes[row, :len(cell)] = cell[:, 0]
            values[row, :len(cell)] = cell[:, 1].float()
        return genes.to(device), values.to(device), genes.eq(self.pad_id).to(device)

    def forward(self, genes: torch.Tensor, values: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(genes, values, padding)))

    def embed(self, genes: torch.Tensor, values: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Cell embeddings [batch, width]: the mean of the encoder's outputs at the cell's gene positions."""
        hidden = self.network._encode(genes, values, src_key_padding_mask=padding)
        gene_positions = (~padding).to(hidden.dtype)
        gene_positions[:, 0] = 0  # not <cls>
        return (hidden * gene_positions.unsqueeze(-1)).sum(1) / gene_positions.sum(1, keepdim=True).clamp(min=1)

    def _layers(self):
        return self.network.transformer_encoder.layers

    def freeze_layers(self, n: int) -> None:
        """Keep the first n transformer layers fixed."""
        for layer in self._layers()[:n]:
            for param in layer.parameters():
                param.requires_grad = False

    def set_attention_dropout(self, rate: float) -> None:
        """Dropout on attention probabilities (torch's MultiheadAttention reads `dropout` every call)."""
        for layer in self._layers():
            layer.self_attn.dropout = rate

    def set_hidden_dropout(self, rate: float) -> None:
        """Dropout on the value encoder's output and on every attention and feed-forward output (scGPT's
        `dropout`, 0.2 in helical's model)."""
        if hasattr(self.network.value_encoder, "dropout"):
            self.network.value_encoder.dropout.p = rate
        for layer in self._layers():
            layer.dropout.p = layer.dropout1.p = layer.dropout2.p = rate


def save(model: ScgptClassifier, meta, base_folder: Path, nhead: int, out_dir: Path) -> None:
    """Write the model folder (see module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.network.state_dict().items()}
    torch.save(state, out_dir / "best_model.pt")
    shutil.copyfile(base_folder / "vocab.json", out_dir / "vocab.json")
    args = json.loads((base_folder / "args.json").read_text()) if (base_folder / "args.json").is_file() else {}
    (out_dir / "args.json").write_text(json.dumps({**args, "nheads": nhead}, indent=1))
    write_head(model, meta, out_dir)
