"""GenePT's one file in helical's cache layout: a table of text embeddings, one row per gene symbol.

helical 3.1.4's `GenePTConfig` has one model, "gpt3.5", whose only file is
`$CACHE_DIR_HELICAL/genept/genept_embeddings/genept_embeddings.json`: a JSON object from gene symbol to
`{"embeddings": [float, ...]}` (GenePT's GPT-3.5 / ada-002 embeddings of each gene's NCBI summary; 1,536
numbers each in GenePT's release; helical's config says embsize 512, which nothing reads). helical's
constructor passes the file to its downloader, which asks helical's bucket about it even when it is cached
and deletes it when the bucket can't be reached; here a cached file is read as it is, and the downloader is
only called for a file that is missing.

Reading: helical `json.load`s the whole file into Python lists (several bytes of objects per number); here
each gene's list becomes a float32 row as the parser reaches it, so the table costs its text plus
genes x width x 4 bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helical_runner.errors import InputError

NAME = "gpt3.5"  # GenePTConfig's only model_name
RELATIVE = "genept/genept_embeddings/genept_embeddings.json"  # GenePTConfig's list_of_files_to_download
DEFAULT_WIDTH = 1536  # ada-002's width, GenePT's release: what `info` says before the table is cached
_FIRST_ROW = re.compile(r'"embeddings"\s*:\s*\[([^\]]*)\]')


@dataclass(frozen=True)
class GeneTable:
    """GenePT's table: `symbols` as the file spells them (helical looks up a file gene's name upper-cased),
    `rows` symbol -> row of `vectors` [genes, width] float32."""

    symbols: list[str]
    rows: dict[str, int]
    vectors: np.ndarray

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])


def table_path() -> Path:
    from helical.constants.paths import CACHE_DIR_HELICAL

    return Path(CACHE_DIR_HELICAL) / RELATIVE


def missing_files() -> list[str]:
    return [] if table_path().is_file() else [str(table_path())]


def locate(fetch_missing: bool = True) -> Path:
    """The table's path, downloading it through helical's downloader only when it is not cached;
    UnavailableError (one line) when it is missing and can't be fetched."""
    from helical_runner.models.cache import ensure_cached

    def fetch(path: Path) -> None:
        from helical.utils.downloader import Downloader

        Downloader().download_via_name(RELATIVE)

    ensure_cached(f"GenePT {NAME}", [table_path()], fetch, fetch_missing)
    return table_path()


def width(path: Path) -> int:
    """The embedding width from the table's first row, without parsing the rest (for `info`);
    DEFAULT_WIDTH when the start of the file holds no row."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(1 << 20)
    found = _FIRST_ROW.search(head)
    return len([v for v in found.group(1).split(",") if v.strip()]) if found else DEFAULT_WIDTH


def read_table(path: Path) -> GeneTable:
    """The whole table; InputError naming the file when it is not GenePT's JSON layout (an object of
    `{"embeddings": [numbers]}` of one width) or holds no gene."""

    def row(obj: dict):
        vector = obj.get("embeddings")
        if isinstance(vector, list):
            try:
                obj["embeddings"] = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise InputError(f"GenePT table {path}: a gene's 'embeddings' is not a list of numbers") from None
        return obj

    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle, object_hook=row)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"GenePT table {path} is not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict) or not content:
        raise InputError(f"GenePT table {path} is not a JSON object of genes")
    symbols, vectors = [], []
    for symbol, entry in content.items():
        vector = entry.get("embeddings") if isinstance(entry, dict) else None
        if not isinstance(vector, np.ndarray) or vector.ndim != 1:
            raise InputError(f"GenePT table {path}: gene '{symbol}' has no 'embeddings' list")
        if vectors and len(vector) != len(vectors[0]):
            raise InputError(f"GenePT table {path}: gene '{symbol}' has {len(vector)} numbers, "
                             f"'{symbols[0]}' {len(vectors[0])}")
        symbols.append(symbol)
        vectors.append(vector)
    del content
    matrix = np.stack(vectors)
    if not np.isfinite(matrix).all():
        raise InputError(f"GenePT table {path} holds non-finite numbers")
    # a symbol spelled twice in the JSON: json keeps the last, as helical's dict does
    return GeneTable(symbols=symbols, rows={s: i for i, s in enumerate(symbols)}, vectors=matrix)
