"""Gene ids across the two systems (Ensembl ids, symbols) as helical's own mapping table pairs them.

helical maps between the systems with one static table, `hsapiens_pybiomart.csv` in its cache (columns
ensembl_id, gene_name; `helical.utils.mapping._load_static_ensembl_df`), taking the first row of each key
(`drop_duplicates` then a lookup, so a key whose first row has no name maps to nothing). helical fetches
that table through its downloader, which deletes the cached copy when its bucket can't be reached; here it
is read straight from the cache when present. Without it the runner's own table of protein-coding genes
(data/genes.py, Bioconductor's org.Hs.eg.db) stands in, so a cache without helical's table still maps
the common genes.
"""

from __future__ import annotations

import functools
from pathlib import Path

HELICAL_TABLE = "hsapiens_pybiomart.csv"  # helical's static human table, directly under its cache folder


def helical_table() -> Path:
    from helical.constants.paths import CACHE_DIR_HELICAL

    return Path(CACHE_DIR_HELICAL) / HELICAL_TABLE


@functools.lru_cache(maxsize=4)
def _pairs(path: str | None, mtime: float) -> tuple[dict[str, str], dict[str, str]]:
    """(Ensembl id -> symbol, symbol -> Ensembl id), first row of each key winning."""
    if path is not None:
        import pandas as pd

        frame = pd.read_csv(path, index_col=0, dtype={"ensembl_id": str, "gene_name": str})
        by_id = frame.drop_duplicates(subset="ensembl_id").dropna(subset=["ensembl_id", "gene_name"])
        by_name = frame.drop_duplicates(subset="gene_name").dropna(subset=["ensembl_id", "gene_name"])
        return (dict(zip(by_id["ensembl_id"], by_id["gene_name"])),
                dict(zip(by_name["gene_name"], by_name["ensembl_id"])))
    from helical_runner.data import genes

    table = genes.load()
    to_symbol: dict[str, str] = {}
    for symbol, ensembl_id in sorted(table.symbols.items()):  # an id with two symbols: the first by name
        to_symbol.setdefault(ensembl_id, symbol)
    return to_symbol, dict(table.symbols)


def _current() -> tuple[dict[str, str], dict[str, str]]:
    path = helical_table()
    if path.is_file():
        return _pairs(str(path), path.stat().st_mtime)
    return _pairs(None, 0.0)


def ensembl_to_symbol() -> dict[str, str]:
    """Unversioned Ensembl id -> gene symbol (helical's table when cached, else the runner's)."""
    return _current()[0]


def symbol_to_ensembl() -> dict[str, str]:
    """Gene symbol (as spelled) -> Ensembl id (helical's table when cached, else the runner's)."""
    return _current()[1]


def source() -> str:
    """Which table maps ids here, for reports: helical's file, or the runner's own."""
    path = helical_table()
    return str(path) if path.is_file() else "helical-runner's protein-coding gene table (data/genes.py)"
