#!/bin/sh
# Step 1b of the runner's install in docker/Dockerfile.runner (both targets), on top of install-deps.sh's
# layer: numba's compiled code for umap-learn and pynndescent, kept in the image at $NUMBA_CACHE_DIR.
# Without it every `predict` container compiled them again on `import umap` (~10 s on 2 cores) before
# drawing umap.png. numba reuses an entry only on a CPU like the build machine's; elsewhere it compiles and
# writes its own entries, so the folder stays writable by uid 50000 and any uid in group 0.
set -eu
: "${NUMBA_CACHE_DIR:?set NUMBA_CACHE_DIR}"
mkdir -p "$NUMBA_CACHE_DIR"
# the call umap_plot.py makes (scanpy's defaults, a seed), on a few random cells; then embed's
# (clusters.py): scanpy's neighbours on over 4,096 cells (pynndescent's index), Leiden and UMAP
/opt/venv/bin/python - <<'PY'
import anndata
import numpy as np
import scanpy as sc
import umap

cells = np.random.default_rng(0).random((200, 16), dtype=np.float32)
umap.UMAP(n_neighbors=15, min_dist=0.5, random_state=0, n_jobs=1).fit_transform(cells)
many = anndata.AnnData(obsm={"X_e": np.random.default_rng(0).random((5000, 16), dtype=np.float32)})
sc.pp.neighbors(many, n_neighbors=15, use_rep="X_e", random_state=0)
sc.tl.leiden(many, flavor="igraph", n_iterations=2, directed=False, random_state=0)
sc.tl.umap(many, random_state=0)
PY
chown -R 50000:0 "$NUMBA_CACHE_DIR" && chmod -R g+rwX "$NUMBA_CACHE_DIR"
