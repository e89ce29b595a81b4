"""scGPT's files in helical's cache layout, and its architecture read from the checkpoint itself.

helical keeps one scGPT, the continual-pretrained `scGPT_CP`: `$CACHE_DIR_HELICAL/scgpt/scGPT_CP/vocab.json`
(gene symbol -> token) and `best_model.pt` (a plain state dict). helical's `scGPT` builds the network from
`scGPTConfig`'s defaults (12 layers, width 512) and loads the state dict non-strictly, skipping every key
of another shape: a checkpoint of another size then runs as random weights without a word. Here the
width, depth, feed-forward size and decoders are read from the weights' shapes, the heads from an
`args.json` beside them (scGPT's own release ships one; 8, scGPT's default, without it), helical's own
`TransformerModel` is built with them, and every weight must load: otherwise one line says what didn't.
Nothing here contacts helical's bucket when the files are cached.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from helical_runner.errors import InputError

NAME = "scGPT_CP"  # helical's only scGPT (scGPTConfig: model_name "best_model" under scgpt/scGPT_CP)
FILES = ("vocab.json", "best_model.pt")
MAX_LENGTH = 1200  # helical's scGPTConfig MAX_LENGTH: genes a cell, <cls> included
PAD_VALUE = -2  # scGPTConfig pad_value: the expression value at <cls> and padding
DEFAULT_HEADS = 8  # scGPTConfig nheads


@dataclass(frozen=True)
class Architecture:
    ntoken: int
    d_model: int
    nhead: int
    d_hid: int
    nlayers: int
    nlayers_cls: int
    n_cls: int
    do_mvc: bool


def model_dir() -> Path:
    from helical.constants.paths import CACHE_DIR_HELICAL

    return Path(CACHE_DIR_HELICAL) / "scgpt" / NAME


def missing_files() -> list[str]:
    return [str(model_dir() / name) for name in FILES if not (model_dir() / name).is_file()]


def locate(fetch_missing: bool = True) -> Path:
    """The model folder, downloading missing files through helical's downloader (only then)."""
    from helical_runner.models.cache import ensure_cached

    def fetch(path: Path) -> None:
        from helical.utils.downloader import Downloader

        Downloader().download_via_name(f"scgpt/{NAME}/{path.name}")

    ensure_cached(NAME, [model_dir() / name for name in FILES], fetch, fetch_missing)
    return model_dir()


def read_state(path: Path) -> dict:
    """The checkpoint's tensors (weights only: a file can't run code), keys as helical renames them."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same problem
        raise InputError(f"scGPT checkpoint {path} is unreadable ({type(exc).__name__})") from None
    # flash-attention checkpoints name the fused projection Wqkv; torch's MultiheadAttention in_proj_
    return {k.replace("Wqkv.", "in_proj_"): v for k, v in state.items()}


def architecture(state: dict, folder: Path) -> Architecture:
    """The network's sizes, from the weights' shapes (heads: args.json beside them, else 8)."""
    try:
        ntoken, d_model = state["encoder.embedding.weight"].shape
        layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer_encoder\.layers\.(\d+)\.", k))}
        d_hid = state["transformer_encoder.layers.0.linear1.weight"].shape[0]
        cls_linears = [k for k, v in state.items() if k.startswith("cls_decoder._decoder.") and v.ndim == 2]
        n_cls = state["cls_decoder.out_layer.weight"].shape[0]
    except KeyError as exc:
        raise InputError(f"scGPT checkpoint in {folder} has no {exc.args[0]}: not an scGPT TransformerModel") from None
    args = folder / "args.json"
    nhead = int(json.loads(args.read_text()).get("nheads", DEFAULT_HEADS)) if args.is_file() else DEFAULT_HEADS
    if d_model % nhead:
        raise InputError(f"scGPT checkpoint in {folder}: width {d_model} is not divisible by {nhead} heads")
    return Architecture(ntoken=int(ntoken), d_model=int(d_model), nhead=nhead, d_hid=int(d_hid), nlayers=len(layers),
                        nlayers_cls=len(cls_linears) + 1, n_cls=int(n_cls),
                        do_mvc=any(k.startswith("mvc_decoder.") for k in state))


def load_network(folder: Path):
    """helical's TransformerModel with every checkpoint weight loaded, in eval mode."""
    from helical.models.scgpt.model_dir import TransformerModel

    vocab = json.loads((folder / "vocab.json").read_text())
    state = read_state(folder / "best_model.pt")
    arch = architecture(state, folder)
    if arch.ntoken != len(vocab):
        raise InputError(f"scGPT checkpoint in {folder} has {arch.ntoken} gene tokens, its vocab.json {len(vocab)}")
    model = TransformerModel(ntoken=arch.ntoken, d_model=arch.d_model, nhead=arch.nhead, d_hid=arch.d_hid,
                             nlayers=arch.nlayers, nlayers_cls=arch.nlayers_cls, n_cls=arch.n_cls, vocab=vocab,
                             dropout=0.2, pad_token="<pad>", pad_value=PAD_VALUE, do_mvc=arch.do_mvc, do_dab=False,
                             use_batch_labels=False, domain_spec_batchnorm=False, explicit_zero_prob=False,
                             pre_norm=False)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    unknown = [k for k in state if k not in expected]
    if missing or wrong or unknown:
        example = (missing or wrong or unknown)[0]
        raise InputError(f"scGPT checkpoint in {folder} does not load as the network its shapes describe "
                         f"({arch.nlayers} layers, width {arch.d_model}): {len(missing)} weights missing, "
                         f"{len(wrong)} of another shape, {len(unknown)} unknown (e.g. {example})")
    model.load_state_dict(state, strict=True)
    return model.eval()
