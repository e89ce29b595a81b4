"""Nicheformer's files in helical's cache layout, and its network and tokenizer loaded from them offline.

helical 3.1.4's `NicheformerConfig` keeps one Nicheformer (Hugging Face's theislab/Nicheformer) in
`$CACHE_DIR_HELICAL/nicheformer/`: `config.json` (helical's NicheformerConfig: width, heads, layers, tokens,
context length), `model.safetensors` (NicheformerForMaskedLM's weights), `vocab.json` (token -> id; its
gene keys, Ensembl ids, are the genes it reads) and `model.h5ad` (the reference AnnData whose genes fix each
gene's token: the tokenizer concatenates it before the cells, see tokenizer.py). Unlike helical's other
families, Nicheformer fetches them with `download_via_link`, which skips a file that exists, so helical itself
loads offline from a filled cache; here the downloader is still only called for a missing file. helical
reads no tokenizer_config.json (so max_length 1500, 30 auxiliary tokens, no per-gene medians) and applies
no technology means unless its config is given one (its default: none), as here.
"""

from __future__ import annotations

import json
from pathlib import Path

from helical_runner.errors import InputError

NAME = "theislab/Nicheformer"  # NicheformerConfig's model_name (the Hugging Face repository helical fetches)
FILES = ("config.json", "vocab.json", "model.safetensors", "model.h5ad")  # helical's _MODEL_FILES
DEFAULT_WIDTH = 512  # NicheformerConfig dim_model, until config.json says otherwise
DEFAULT_CONTEXT = 1500  # NicheformerConfig context_length = the tokenizer's max_length


def model_dir() -> Path:
    from helical.constants.paths import CACHE_DIR_HELICAL

    return Path(CACHE_DIR_HELICAL) / "nicheformer"


def missing_files() -> list[str]:
    return [str(model_dir() / name) for name in FILES if not (model_dir() / name).is_file()]


def locate(fetch_missing: bool = True) -> Path:
    """The model folder, fetching missing files with helical's downloader (only then; it skips cached ones)."""
    from helical_runner.models.cache import ensure_cached

    def fetch(path: Path) -> None:
        from helical.models.nicheformer import NicheformerConfig
        from helical.utils.downloader import Downloader

        links = {Path(p).name: url for p, url in NicheformerConfig(model_name=NAME).list_of_files_to_download}
        Downloader().download_via_link(path, links[path.name])

    ensure_cached(NAME, [model_dir() / name for name in FILES], fetch, fetch_missing)
    return model_dir()


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"Nicheformer config {folder / 'config.json'} is unreadable ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise InputError(f"Nicheformer config {folder / 'config.json'} is not a JSON object")
    return config


def load_tokenizer(folder: Path):
    """helical's NicheformerTokenizer as helical builds it (`from_pretrained` on the folder: vocab.json and
    the reference model.h5ad); InputError when the reference can't be read (helical would print a warning and
    give every gene a token from the file's own order, which is not the model's)."""
    from helical.models.nicheformer.tokenization_nicheformer import NicheformerTokenizer

    tokenizer = NicheformerTokenizer.from_pretrained(str(folder))
    if tokenizer._reference_model_cache is None:
        raise InputError(f"Nicheformer reference {folder / 'model.h5ad'} is unreadable: it fixes every gene's token")
    return tokenizer


def load_network(folder: Path):
    """helical's NicheformerForMaskedLM with every weight of model.safetensors loaded, in eval mode;
    InputError (one line) when a weight is missing, unknown or of another shape."""
    from helical.models.nicheformer.modeling_nicheformer import NicheformerForMaskedLM

    try:
        model, info = NicheformerForMaskedLM.from_pretrained(str(folder), output_loading_info=True,
                                                             local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"Nicheformer weights in {folder} do not load ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    problems = {kind: list(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        example = next(v for v in problems.values() if v)[0]
        raise InputError(f"Nicheformer weights in {folder} do not load as its config.json describes "
                         f"({model.config.nlayers} layers, width {model.config.dim_model}): "
                         f"{len(problems['missing_keys'])} weights missing, {len(problems['mismatched_keys'])} of "
                         f"another shape, {len(problems['unexpected_keys'])} unknown (e.g. {example})")
    return model.eval()
