"""The models the runner runs, for the DAGs' forms (the DAG side never imports helical).

The same list `helical-runner info` prints (helical_runner.models.catalogue(); tests/runner/test_embed.py
checks they agree): helical's model name -> (family, whether finetune/predict work for it).
"""

from __future__ import annotations

DEFAULT_MODEL = "gf-12L-38M-i4096"

MODELS: dict[str, tuple[str, bool]] = {
    "gf-12L-38M-i4096": ("geneformer", True),
    "gf-12L-38M-i4096-CLcancer": ("geneformer", True),
    "gf-20L-151M-i4096": ("geneformer", True),
    "gf-12L-40M-i2048": ("geneformer", True),
    "gf-6L-10M-i2048": ("geneformer", True),
    "gf-12L-104M-i4096": ("geneformer", True),
    "gf-12L-104M-i4096-CLcancer": ("geneformer", True),
    "gf-18L-316M-i4096": ("geneformer", True),
    "gf-12L-40M-i2048-CZI-CellxGene": ("geneformer", True),
    "scGPT_CP": ("scgpt", True),
    "gpt3.5": ("genept", False),
    "theislab/Nicheformer": ("nicheformer", False),
}


def fine_tunable() -> list[str]:
    """Models a fine-tune can start from, the default first."""
    return [DEFAULT_MODEL] + sorted(name for name, (_, tunes) in MODELS.items() if tunes and name != DEFAULT_MODEL)


def embeddable() -> list[str]:
    """Models `embed` runs, the default first."""
    return [DEFAULT_MODEL] + sorted(name for name in MODELS if name != DEFAULT_MODEL)
