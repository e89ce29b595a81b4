"""helical's own Geneformer tokenizer driven on an AnnData: the reference our tokens must equal."""

from __future__ import annotations

import anndata
import numpy as np

from helical_runner.models.geneformer.files import ModelFiles


def helical_tokens(files: ModelFiles, adata: anndata.AnnData, collapse: bool = False) -> list[np.ndarray]:
    """Token ids per cell from helical's `TranscriptomeTokenizer` (adata.var['ensembl_id'] holds the genes).

    collapse=True first runs helical's own `sum_ensembl_ids` (collapse_gene_ids=True, its default): helical
    3.1.4's `tokenize_anndata` sums the same way but then looks up var['ensembl_id'], which its summed
    AnnData no longer has (KeyError), so the summed ids are put there; nothing else changes."""
    from helical.models.geneformer.geneformer_tokenizer import TranscriptomeTokenizer, sum_ensembl_ids

    tk = TranscriptomeTokenizer(model_input_size=files.input_size, special_token=files.special_token,
                                gene_median_file=files.gene_median_dictionary,
                                token_dictionary_file=files.token_dictionary, gene_mapping_file=files.ensembl_mapping)
    adata = adata.copy()
    if collapse:
        adata = sum_ensembl_ids(adata, True, tk.gene_mapping_dict, tk.gene_token_dict)
        adata.var["ensembl_id"] = adata.var["ensembl_id_collapsed"].astype(str)
    cells, _ = tk.tokenize_anndata(adata)
    return [np.asarray(row["input_ids"]) for row in tk.create_dataset(cells, None)]
