"""Stand-ins for what can't be downloaded here: a tiny random Geneformer in helical's cache layout, and
synthetic single-cell counts with cell types a classifier can learn. Both speak real human genes: the
vocabulary is the ~19,400 protein-coding Ensembl ids of helical_runner.data.genes (with their symbols in the
mapping file), and each cell type expresses its real marker genes. Used by the tests, `make demo` and the
benchmarks; also handy on a laptop:

    python -m helical_runner.data.synthetic model --cache-prefix data/demo/helical [--gene-table FILE]
    python -m helical_runner.data.synthetic genept --cache-prefix data/demo/helical [--width 64]
    python -m helical_runner.data.synthetic nicheformer --cache-prefix data/demo/helical [--layers 2 --width 32]
    python -m helical_runner.data.synthetic data --output data/demo/cells.h5ad --cells 2000
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helical_runner.data import genes as gene_table

SPECIAL_TOKENS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
# Canonical markers (PanglaoDB / the PBMC3k tutorial's lists), so cell types look like real ones.
MARKERS = {  # 20 a type: with fewer, one epoch of the tiny model at the demo's size misses B cells
    "B cell": ["MS4A1", "CD79A", "CD79B", "CD19", "PAX5", "BANK1", "CD22", "FCRL1", "BLK", "TCL1A",
              "CD72", "VPREB3", "FCER2", "CR2", "SPIB", "POU2AF1", "IGLL5", "CD37", "HLA-DOB", "BLNK"],
    "CD4 T cell": ["CD3E", "IL7R", "CD3D", "CD4", "CD2", "LCK", "CD28", "TRAT1", "CCR7", "LEF1",
                  "CD5", "CD6", "TCF7", "MAL", "CD40LG", "ICOS", "CTLA4", "ZAP70", "ITK", "CD247"],
    "monocyte": ["LYZ", "CD14", "S100A8", "S100A9", "FCN1", "VCAN", "CSF1R", "CD68", "LST1", "MNDA",
                "CST3", "TYROBP", "FCER1G", "LGALS2", "CD36", "CFD", "SERPINA1", "LILRB2", "CSF3R", "FPR1"],
    "erythroblast": ["HBB", "GYPA", "HBA1", "ALAS2", "KLF1", "GATA1", "CA1", "SLC4A1", "EPOR", "TFRC",
                    "HBD", "HBG1", "HBG2", "AHSP", "HEMGN", "RHAG", "SPTA1", "ANK1", "EPB42", "TRIM58"],
    "NK cell": ["NKG7", "GNLY", "KLRD1", "NCAM1", "PRF1", "GZMB", "KLRF1", "FCGR3A", "GZMA", "KLRB1",
               "CTSW", "CST7", "KLRC1", "SH2D1B", "TXK", "IL2RB", "CD160", "NCR1", "NCR3", "FGFBP2"],
    "macrophage": ["CD163", "MRC1", "C1QA", "C1QB", "C1QC", "APOE", "MARCO", "MSR1", "SPP1", "FCGR1A",
                  "CD209", "SIGLEC1", "VSIG4", "FOLR2", "LYVE1", "STAB1", "F13A1", "SLC40A1", "HMOX1", "CD5L"],
    "HSC": ["CD34", "PROM1", "KIT", "CRHBP", "HLF", "MECOM", "SPINK2", "AVP", "THY1", "MEIS1",
           "GATA2", "HOPX", "MLLT3", "NPR3", "BAALC", "MYCN", "DLK1", "ERG", "SOX4", "CD38"],
    "endothelial": ["PECAM1", "VWF", "CDH5", "KDR", "TEK", "CLDN5", "EMCN", "ESAM", "PLVAP", "ENG",
                   "SOX17", "SOX18", "EGFL7", "ROBO4", "TIE1", "NOS3", "FLT1", "ICAM2", "CAV1", "MMRN1"],
}
CELL_TYPES = list(MARKERS)
N_MARKERS = len(MARKERS["B cell"])
DEFAULT_MODEL = "gf-12L-38M-i4096"


@functools.lru_cache(maxsize=2)
def _table(path: str | None) -> gene_table.GeneTable:
    return gene_table.load(Path(path) if path else None)


def panel(n: int | None = None, genes: Path | None = None) -> pd.DataFrame:
    """The genes synthetic files measure, in column order: every cell type's markers first, then the other
    protein-coding genes in a fixed shuffled order. Columns `ensembl_id`, `symbol`; `n` rows (default all)."""
    table = _table(str(genes) if genes else None)
    markers = [(table.id_of(s), s) for symbols in MARKERS.values() for s in symbols]
    symbol_of = {}
    for symbol, ensembl_id in sorted(table.symbols.items()):
        symbol_of.setdefault(ensembl_id, symbol)
    taken = {i for i, _ in markers}
    rest = [i for i in table.ids if i not in taken]
    rest = [rest[k] for k in np.random.default_rng(20_275).permutation(len(rest))]  # fixed: every call agrees
    rows = markers + [(i, symbol_of[i]) for i in rest]
    return pd.DataFrame(rows[:n] if n is not None else rows, columns=["ensembl_id", "symbol"])


def write_tiny_geneformer(cache_prefix: Path, model_name: str = DEFAULT_MODEL, layers: int = 2,
                          hidden: int = 64, heads: int = 4, seed: int = 0, dropout: float = 0.02,
                          genes: Path | None = None) -> Path:
    """A random BertForMaskedLM over real human genes where helical looks for `model_name`.

    `cache_prefix` plays the role of $CACHE_DIR_HELICAL_PREFIX; `genes` is a gene table (helical_runner.data.genes;
    default: the cached one, built when missing). Its files: token_dictionary.json (special tokens, then the
    protein-coding Ensembl ids, sorted), gene_median_dictionary.json (random medians, seeded),
    ensembl_mapping_dict.json (id -> id and upper-cased symbol -> id, as Geneformer's own). Returns the model folder.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM
    from helical_runner.models.geneformer.files import config_class

    facts = config_class()(model_name=model_name).model_map[model_name]
    version_dir = Path(cache_prefix, ".cache", "helical", "models", "geneformer", facts["model_version"])
    model_dir = version_dir / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    table = _table(str(genes) if genes else None)
    ids = table.ids
    tokens = dict(SPECIAL_TOKENS) if facts["special_token"] else {"<pad>": 0, "<mask>": 1}
    tokens.update({g: i + len(tokens) for i, g in enumerate(ids)})
    # symbols upper-cased, as Geneformer's mapping keys are: tokenizers look up name.upper()
    upper_symbols = {s.upper(): i for s, i in table.symbols.items()}
    rng = np.random.default_rng(seed)
    medians = {g: float(m) for g, m in zip(ids, rng.lognormal(mean=0.5, sigma=0.6, size=len(ids)))}
    for name, content in (("token_dictionary.json", tokens), ("gene_median_dictionary.json", medians),
                          ("ensembl_mapping_dict.json", {**{g: g for g in ids}, **upper_symbols})):
        (version_dir / name).write_text(json.dumps(content))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokens), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2,
                        max_position_embeddings=max(facts["input_size"], 2048), pad_token_id=0,
                        # Geneformer's own dropout is 0.02; attention dropout stays off in the stand-in
                        # because on CPU it forces SDPA's slow math path and would dominate test time.
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0)
    BertForMaskedLM(config).save_pretrained(model_dir)
    (model_dir / "training_args.bin").write_bytes(b"")  # helical lists it; nothing reads it
    return model_dir


def _block(rng, n_cells: int, n_genes: int, types: np.ndarray, genes_per_cell: int, n_markers: int = N_MARKERS):
    """CSR counts for one block of cells: marker genes of the cell's type high, random genes low."""
    reserved = n_markers * len(CELL_TYPES)  # marker genes occupy the first columns (see panel())
    k = min(genes_per_cell, n_genes - reserved)
    random_cols = np.sort(rng.integers(reserved, n_genes, size=(n_cells, k)), axis=1)
    keep = np.ones_like(random_cols, dtype=bool)
    keep[:, 1:] = random_cols[:, 1:] != random_cols[:, :-1]
    marker_cols = types[:, None] * n_markers + np.arange(n_markers)[None, :]
    cols = np.concatenate([marker_cols, random_cols], axis=1)
    mask = np.concatenate([np.ones_like(marker_cols, dtype=bool), keep], axis=1)
    counts = np.concatenate([rng.poisson(30, marker_cols.shape) + 10, 1 + rng.poisson(2, random_cols.shape)], axis=1)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    return sp.csr_matrix((counts[mask].astype(np.float32), cols[mask].astype(np.int32), indptr),
                         shape=(n_cells, n_genes))


def make_h5ad(path: Path, n_cells: int, n_genes: int = 2000, n_types: int = 4, genes_per_cell: int = 300,
              seed: int = 0, block_cells: int = 5000, label_column: str = "cell_type",
              genes: Path | None = None) -> Path:
    """Write a synthetic raw-count .h5ad block by block, so even 200,000 cells never sit in memory at once.

    Laid out as CELLxGENE does: Ensembl ids as var names, symbols in var['feature_name']; n_genes of panel(),
    capped (with one line on stderr) at the genes the gene table holds, so X and var always agree."""
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    if n_genes < N_MARKERS * len(CELL_TYPES):
        raise ValueError(f"n_genes must be at least {N_MARKERS * len(CELL_TYPES)} (the marker genes)")
    measured = panel(n_genes, genes)
    if len(measured) < n_genes:
        print(f"synthetic: {n_genes} genes asked for, but the gene table holds {len(measured)} protein-coding "
              f"genes: writing {len(measured)}", file=sys.stderr)
        n_genes = len(measured)
    types = rng.integers(0, n_types, size=n_cells)
    obs = pd.DataFrame(
        {label_column: pd.Categorical([CELL_TYPES[t] for t in types], categories=CELL_TYPES[:n_types]),
         "donor": pd.Categorical(rng.choice(["donor-1", "donor-2", "donor-3"], size=n_cells))},
        index=pd.Index([f"cell-{i:07d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame({"feature_name": measured["symbol"].to_numpy()},
                       index=pd.Index(measured["ensembl_id"].to_numpy()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        for start in range(0, max(n_cells, 1), block_cells):
            stop = min(start + block_cells, n_cells)
            X = _block(rng, stop - start, n_genes, types[start:stop], genes_per_cell)
            if start == 0:
                write_elem(f, "X", X)  # anndata makes sparse datasets resizable
            else:
                sparse_dataset(f["X"]).append(X)
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for empty in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, empty, {})
    return path


def write_tiny_scgpt(cache_prefix: Path, layers: int = 2, width: int = 64, heads: int = 4, seed: int = 0,
                     genes: Path | None = None) -> Path:
    """A random scGPT where helical looks for scGPT_CP (`<prefix>/.cache/helical/models/scgpt/scGPT_CP`):
    vocab.json over the gene table's real human symbols, best_model.pt (helical's TransformerModel, seeded),
    and an args.json naming its heads, as scGPT's releases do. Returns the model folder."""
    import torch
    from helical.models.scgpt.model_dir import TransformerModel

    from helical_runner.models.scgpt.files import NAME, PAD_VALUE

    folder = Path(cache_prefix, ".cache", "helical", "models", "scgpt", NAME)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(_table(str(genes) if genes else None).symbols)
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, **{s: i + 3 for i, s in enumerate(symbols)}}
    torch.manual_seed(seed)
    model = TransformerModel(ntoken=len(vocab), d_model=width, nhead=heads, d_hid=width, nlayers=layers,
                             nlayers_cls=3, n_cls=1, vocab=vocab, dropout=0.2, pad_token="<pad>", pad_value=PAD_VALUE,
                             do_mvc=True, do_dab=False, use_batch_labels=False, domain_spec_batchnorm=False,
                             explicit_zero_prob=False, pre_norm=False)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "args.json").write_text(json.dumps({"nheads": heads, "nlayers": layers, "embsize": width,
                                                  "d_hid": width, "stand_in": True}))
    torch.save(model.state_dict(), folder / "best_model.pt")
    return folder


def write_tiny_genept(cache_prefix: Path, width: int = 64, seed: int = 0, genes: Path | None = None) -> Path:
    """A random GenePT table where helical looks for it (`<prefix>/.cache/helical/models/genept/genept_embeddings/
    genept_embeddings.json`): one `{"embeddings": [width numbers]}` per real human symbol of the gene table
    (standard normal, seeded), keys spelled as the table spells them, as GenePT's own. Returns the file."""
    from helical_runner.models.genept.files import RELATIVE

    path = Path(cache_prefix, ".cache", "helical", "models", RELATIVE)
    path.parent.mkdir(parents=True, exist_ok=True)
    symbols = sorted(_table(str(genes) if genes else None).symbols)
    vectors = np.random.default_rng(seed).standard_normal((len(symbols), width)).astype(np.float32)
    with open(path, "w") as handle:
        json.dump({s: {"embeddings": [float(v) for v in row]} for s, row in zip(symbols, vectors)}, handle)
    return path


def write_tiny_nicheformer(cache_prefix: Path, layers: int = 2, width: int = 32, heads: int = 4, seed: int = 0,
                           genes: Path | None = None) -> Path:
    """A random Nicheformer where helical looks for it (`<prefix>/.cache/helical/models/nicheformer`): config.json
    and model.safetensors (helical's NicheformerForMaskedLM, seeded; context 1,500 as the tokenizer's
    max_length), vocab.json ([PAD] 1, [MASK] 0, [CLS] 2, then the gene table's Ensembl ids from 30, as the
    tokenizer numbers genes) and model.h5ad (the reference: one empty cell over those genes). Returns the folder."""
    import anndata
    import torch
    from helical.models.nicheformer.configuration_nicheformer import NicheformerConfig
    from helical.models.nicheformer.modeling_nicheformer import NicheformerForMaskedLM

    folder = Path(cache_prefix, ".cache", "helical", "models", "nicheformer")
    folder.mkdir(parents=True, exist_ok=True)
    ids = _table(str(genes) if genes else None).ids
    aux = 30  # helical's NicheformerTokenizer aux_tokens: a gene's token is its reference column + 30
    (folder / "vocab.json").write_text(json.dumps({"[PAD]": 1, "[MASK]": 0, "[CLS]": 2,
                                                   **{g: i + aux for i, g in enumerate(ids)}}))
    anndata.AnnData(X=sp.csr_matrix((1, len(ids)), dtype=np.float32), obs=pd.DataFrame(index=["reference"]),
                    var=pd.DataFrame(index=pd.Index(ids))).write_h5ad(folder / "model.h5ad")
    torch.manual_seed(seed)
    config = NicheformerConfig(dim_model=width, nheads=heads, dim_feedforward=width * 2, nlayers=layers,
                               n_tokens=len(ids) + aux, context_length=1500)
    NicheformerForMaskedLM(config).save_pretrained(folder)
    return folder


def _stand_in(sub, name: str, what: str, width: int | None = None, layers: bool = True):
    """A subcommand writing one family's stand-in: --cache-prefix and --gene-table, and the network's shape."""
    parser = sub.add_parser(name, help=f"write a tiny random {what} into a helical cache")
    parser.add_argument("--cache-prefix", type=Path, required=True, help="acts as $CACHE_DIR_HELICAL_PREFIX")
    parser.add_argument("--gene-table", type=Path,
                        help="gene table (python -m helical_runner.data.genes; default: the cached one)")
    if layers:
        parser.add_argument("--layers", type=int, default=2)
        parser.add_argument("--heads", type=int, default=4)
    if width is not None:
        parser.add_argument("--width", type=int, default=width, help="embedding width")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helical_runner.data.synthetic", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = _stand_in(sub, "model", "Geneformer")
    m.add_argument("--model", default=DEFAULT_MODEL)
    m.add_argument("--hidden", type=int, default=64)
    _stand_in(sub, "scgpt", "scGPT (scGPT_CP)", width=64)
    _stand_in(sub, "genept", "GenePT gene table (GenePT's own has 1,536 numbers a gene)", width=64, layers=False)
    _stand_in(sub, "nicheformer", "Nicheformer", width=32)
    d = sub.add_parser("data", help="write a synthetic .h5ad of raw counts with cell types")
    d.add_argument("--output", type=Path, required=True)
    d.add_argument("--cells", type=int, default=2000)
    d.add_argument("--genes", type=int, default=2000)
    d.add_argument("--types", type=int, default=4)
    d.add_argument("--genes-per-cell", type=int, default=300)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gene-table", type=Path, help="gene table (default: the cached one)")
    d.add_argument("--label-column", default="cell_type",
                   help="obs column of the true cell types (another name makes a file the runs see as unlabelled)")
    args = parser.parse_args(argv)
    if args.what == "model":
        print(write_tiny_geneformer(args.cache_prefix, args.model, args.layers, args.hidden, args.heads,
                                    genes=args.gene_table))
    elif args.what == "scgpt":
        print(write_tiny_scgpt(args.cache_prefix, args.layers, args.width, args.heads, genes=args.gene_table))
    elif args.what == "genept":
        print(write_tiny_genept(args.cache_prefix, args.width, genes=args.gene_table))
    elif args.what == "nicheformer":
        print(write_tiny_nicheformer(args.cache_prefix, args.layers, args.width, args.heads, genes=args.gene_table))
    else:
        print(make_h5ad(args.output, args.cells, args.genes, args.types, args.genes_per_cell, seed=args.seed,
                        label_column=args.label_column, genes=args.gene_table))


if __name__ == "__main__":
    main()
