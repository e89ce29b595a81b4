"""scGPT encoder + classification head, and the fine-tuned model folder `predict` (and helical) load.

The encoder is helical's `TransformerModel` (files.load_network): its modules and weights, computed as its
`_encode` computes them (helical's `scGPTFineTuningModel._forward` and `get_embeddings` call it) but on
packed cells: a batch is the cells' tokens end to end, [tokens, width], with no padding. The gene and value
encoders, linear layers, layer norms and dropouts are helical's modules, called on every token at once;
attention runs per cell, so no cell attends across another and no mask is needed. Helical pads each batch
to its longest cell and masks: same numbers (tests/runner/test_embed_scgpt.py, test_finetune_scgpt.py),
but every padding position costs a full token's work, and a mask sends PyTorch's CPU attention through a
slower path (bench/benchmarks.py bench_embed_scgpt). The cell embedding is the mean of the gene
positions' outputs (not <cls>), as helical's fine-tuning model and `get_embeddings` (emb_mode "cell") take
it, here over the cell's own genes only (helical also averages the padding of the batch in; see
__init__'s docstring). The
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
from torch.nn import functional as F

from helical_runner.models.classifier import write_head

PRETRAINING_HEADS = ("decoder", "cls_decoder", "mvc_decoder")


class ScgptClassifier(nn.Module):
    def __init__(self, network: nn.Module, n_classes: int, dropout: float = 0.02):
        super().__init__()
        # encode() computes helical's post-norm, continuous-value layers itself: refuse any other network once
        layers = network.transformer_encoder.layers
        if network.input_emb_style != "continuous" or any(layer.norm_first for layer in layers):
            raise ValueError("scGPT network is not the post-norm, continuous-value TransformerModel files.py builds")
        self.network = network
        for name in PRETRAINING_HEADS:
            for param in getattr(network, name).parameters() if hasattr(network, name) else ():
                param.requires_grad = False
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(network.d_model, n_classes)

    def collate(self, cells: list, device: torch.device):
        """(gene tokens [tokens] long, binned values [tokens] float, each cell's length (tuple of ints)) with
        the cells' tokens end to end, on the device, from tokenizer cells ([tokens, 2] int64 arrays)."""
        packed = torch.from_numpy(np.concatenate([np.asarray(c, dtype=np.int64) for c in cells]))
        lengths = tuple(len(c) for c in cells)
        return packed[:, 0].to(device), packed[:, 1].float().to(device), lengths

    def forward(self, genes: torch.Tensor, values: torch.Tensor, lengths: tuple) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(genes, values, lengths)))

    def embed(self, genes: torch.Tensor, values: torch.Tensor, lengths: tuple) -> torch.Tensor:
        """Cell embeddings [cells, width]: the mean of the encoder's outputs at each cell's gene positions."""
        bounds = np.cumsum((0,) + tuple(lengths))
        hidden = self.encode(genes, values, bounds)
        device, n_cells = hidden.device, len(lengths)
        cell = torch.repeat_interleave(torch.arange(n_cells, device=device), torch.as_tensor(lengths, device=device))
        is_gene = torch.ones(len(hidden), 1, dtype=hidden.dtype, device=device)
        is_gene[torch.as_tensor(bounds[:-1], device=device)] = 0  # each cell's <cls>
        sums = hidden.new_zeros(n_cells, hidden.shape[1]).index_add_(0, cell, hidden * is_gene)
        genes_per_cell = torch.as_tensor([n - 1 for n in lengths], dtype=hidden.dtype, device=device)
        return sums / genes_per_cell.clamp(min=1).unsqueeze(1)

    def encode(self, genes: torch.Tensor, values: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
        """The encoder's output [tokens, width] for packed cells (cell i is tokens bounds[i]:bounds[i + 1]):
        helical's `TransformerModel._encode` (gene + value encoders, then every post-norm layer of its
        TransformerEncoder) without padding."""
        net = self.network
        x = net.encoder(genes) + net.value_encoder(values)
        for layer in self._layers():
            x = layer.norm1(x + layer.dropout1(self._attention(layer.self_attn, x, bounds)))
            x = layer.norm2(x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))))
        return x if net.transformer_encoder.norm is None else net.transformer_encoder.norm(x)

    def _attention(self, attn: nn.Module, x: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
        """helical's LoraCompatibleSelfAttention (in_proj, scaled dot-product attention with its dropout,
        out_proj) with each cell attending to its own tokens only."""
        heads, width = attn.num_heads, x.shape[1]
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(len(x), 3, heads, width // heads)
        dropout = attn.dropout if self.training else 0.0
        context = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            q, k, v = qkv[start:end].permute(1, 2, 0, 3).unsqueeze(1)  # each [1, heads, length, head width]
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            context.append(out[0].transpose(0, 1).reshape(end - start, width))
        return attn.out_proj(torch.cat(context))

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
