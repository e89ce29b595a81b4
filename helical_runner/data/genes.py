"""Real human genes for the stand-in Geneformer: protein-coding Ensembl ids and their symbols.

Source: Bioconductor's org.Hs.eg.db annotation, which Debian ships as `r-bioc-org.hs.eg.db` with an SQLite
file inside (tables genes, gene_info, ensembl, genetype joined on `_id`). `apt-get download` + `dpkg-deb -x`
reach it without installing R. The table is built once per machine into the project's cache
($HELICAL_AIRFLOW_CACHE, default ~/.cache/helical-airflow, as scripts/lib.sh caches the venvs) and read from
there; machines without apt (the runner image, the GPU machine) are handed the file itself
(`python -m helical_runner.data.synthetic model --gene-table FILE` or $HELICAL_GENE_TABLE).

    python -m helical_runner.data.genes            # build if missing, print the table's path
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "r-bioc-org.hs.eg.db"
SQLITE_IN_PACKAGE = "usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
TABLE_NAME = "human-protein-coding-genes.tsv"
HEADER = "ensembl_id\tsymbol"

# One Ensembl id per Entrez gene: the annotation also lists ids of alternate haplotypes (HLA-DQA1 has 14),
# which Geneformer's vocabulary (primary assembly) does not hold; the first listed is the primary one.
# An id shared by two Entrez genes keeps both symbols (two symbols -> one id, which tokenizers collapse).
QUERY = """
SELECT e.ensembl_id, i.symbol FROM ensembl e
JOIN gene_info i ON i._id = e._id
JOIN genetype t ON t._id = e._id
WHERE t.gene_type = 'protein-coding' AND e.rowid = (SELECT MIN(rowid) FROM ensembl WHERE _id = e._id)
ORDER BY e.ensembl_id, i.symbol
"""


@dataclass(frozen=True)
class GeneTable:
    """Protein-coding human genes: `ids` distinct Ensembl ids (sorted), `symbols` symbol -> Ensembl id."""

    ids: list[str]
    symbols: dict[str, str]

    def id_of(self, symbol: str) -> str:
        """Ensembl id of a symbol of the table (KeyError names the symbol otherwise)."""
        return self.symbols[symbol]


def cache_root() -> Path:
    """The project's cache folder, the same as scripts/lib.sh's CACHE_ROOT."""
    explicit = os.environ.get("HELICAL_AIRFLOW_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "helical-airflow"


def default_path() -> Path:
    return Path(os.environ.get("HELICAL_GENE_TABLE") or cache_root() / TABLE_NAME)


def build(dest: Path) -> Path:
    """Download the Debian package, read its SQLite annotation, write `dest` (TSV: ensembl_id, symbol).

    Needs apt-get and dpkg-deb (Debian/Ubuntu) and access to a Debian mirror; raises RuntimeError otherwise.
    """
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError(f"building the gene table needs apt-get and dpkg-deb; copy {TABLE_NAME} from a "
                           "machine that has them and pass it with --gene-table or $HELICAL_GENE_TABLE")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".genes-") as tmp:
        # output kept for failures only: as root apt warns that the download is "unsandboxed"
        done = subprocess.run(["apt-get", "download", "-q", PACKAGE], cwd=tmp, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"apt-get download {PACKAGE} failed: {done.stderr.strip()[-500:]}")
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        with sqlite3.connect(f"file:{Path(tmp) / 'x' / SQLITE_IN_PACKAGE}?mode=ro", uri=True) as db:
            rows = db.execute(QUERY).fetchall()
        if len(rows) < 15_000:
            raise RuntimeError(f"{deb.name}: only {len(rows)} protein-coding genes found; the annotation changed")
        partial = Path(tmp) / TABLE_NAME
        partial.write_text(HEADER + "\n" + "".join(f"{i}\t{s}\n" for i, s in rows))
        os.replace(partial, dest)  # a crash never leaves half a table where readers look
    return dest


def ensure(path: Path | None = None) -> Path:
    """The gene table's path, building it first when it is missing (see build())."""
    path = Path(path) if path else default_path()
    return path if path.is_file() else build(path)


def load(path: Path | None = None) -> GeneTable:
    """Read (building when missing) the gene table."""
    lines = ensure(path).read_text().splitlines()
    if not lines or lines[0] != HEADER:
        raise RuntimeError(f"{path}: not a gene table (first line must be '{HEADER}')")
    symbols: dict[str, str] = {}
    ids: set[str] = set()
    for line in lines[1:]:
        ensembl_id, symbol = line.split("\t")
        ids.add(ensembl_id)
        symbols.setdefault(symbol, ensembl_id)
    return GeneTable(ids=sorted(ids), symbols=symbols)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helical_runner.data.genes", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help=f"where the table goes (default: {default_path()})")
    args = parser.parse_args(argv)
    print(ensure(args.output))


if __name__ == "__main__":
    main()
