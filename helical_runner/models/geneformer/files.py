"""Geneformer's files in helical's cache layout: where they are, fetching missing ones, reading them.

helical decides the layout (`$CACHE_DIR_HELICAL_PREFIX/.cache/helical/models/geneformer/<version>/...`)
and the per-model facts (input size, special tokens); we ask its `GeneformerConfig` rather than copy them.
Unlike `helical.models.geneformer.Geneformer`, nothing here contacts helical's bucket when every file is
already cached, so the runner works offline.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from helical_runner.errors import InputError, UnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFiles:
    name: str
    version: str  # v1 | v2 | v3
    input_size: int  # longest sequence the model was trained on
    special_token: bool  # <cls> ... <eos> around each cell (v2/v3)
    model_dir: Path  # config.json + weights
    token_dictionary: Path
    gene_median_dictionary: Path
    ensembl_mapping: Path


@functools.lru_cache(maxsize=1)
def config_class() -> type:
    """helical's `GeneformerConfig` (helical/models/geneformer/geneformer_config.py), loaded from its file.

    `import helical.models.geneformer.geneformer_config` first runs that package's __init__, which imports
    helical's Geneformer model (transformers, torch, scanpy: 4 to 7 s on a 2-CPU machine) at every runner start;
    the config module itself needs only `helical.constants.paths`. Where helical's package is already imported,
    its own class is returned."""
    loaded = sys.modules.get("helical.models.geneformer.geneformer_config")
    if loaded is not None:
        return loaded.GeneformerConfig
    package = importlib.util.find_spec("helical")  # finds the top package without importing it
    path = Path(package.origin).parent / "models" / "geneformer" / "geneformer_config.py"
    spec = importlib.util.spec_from_file_location("helical_runner.models.geneformer._helical_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GeneformerConfig


def _geneformer_config(name: str):
    GeneformerConfig = config_class()  # noqa: N806 - helical's class
    try:
        return GeneformerConfig(model_name=name)
    except ValueError:
        known = sorted(GeneformerConfig().model_map)
        raise InputError(f"unknown model '{name}'; Geneformer models: {', '.join(known)}") from None


def _missing(config) -> tuple[Path, list[str]]:
    """(helical's cache root, the model's files not in it, relative to it)."""
    cache_root = Path(config.files_config["model_files_dir"]).parents[2]
    return cache_root, [rel for rel in config.list_of_files_to_download
                        if not rel.endswith("training_args.bin")  # never read, so not required offline
                        and not (cache_root / rel).is_file()]


def missing_files(name: str) -> list[Path]:
    """The model's files that are not in helical's cache (full paths)."""
    cache_root, missing = _missing(_geneformer_config(name))
    return [cache_root / rel for rel in missing]


def locate(name: str, fetch_missing: bool = True) -> ModelFiles:
    """The model's files, downloading any that are missing through helical's downloader."""
    config = _geneformer_config(name)
    model_name = config.config["model_name"]  # helical maps deprecated names to new ones
    facts = config.model_map[model_name]
    files = config.files_config
    cache_root, missing = _missing(config)
    if missing and fetch_missing:
        _download(missing, cache_root, model_name)
    return ModelFiles(
        name=model_name,
        version=facts["model_version"],
        input_size=int(facts["input_size"]),
        special_token=bool(facts["special_token"]),
        model_dir=Path(files["model_files_dir"]),
        token_dictionary=Path(files["token_path"]),
        gene_median_dictionary=Path(files["gene_median_path"]),
        ensembl_mapping=Path(files["ensembl_dict_path"]),
    )


def _download(missing: list[str], cache_root: Path, name: str) -> None:
    from helical.utils.downloader import Downloader

    log.info("model %s: downloading %d missing file(s) into %s", name, len(missing), cache_root)
    downloader = Downloader()
    for rel in missing:
        try:
            downloader.download_via_name(rel)
        except Exception as exc:  # noqa: BLE001 - helical raises assorted network errors
            raise UnavailableError(
                f"model {name}: '{rel}' is not in the cache {cache_root} and could not be downloaded "
                f"({type(exc).__name__}); pre-place it there or allow network access"
            ) from exc
        if not (cache_root / rel).is_file():
            raise UnavailableError(f"model {name}: '{rel}' is not in the cache {cache_root} and the download failed")


@functools.lru_cache(maxsize=8)
def read_json(path: Path) -> dict:
    with open(path) as handle:
        return json.load(handle)
