#!/bin/sh
# Step 1b of the runner's install in docker/Dockerfile.runner (both targets), on top of install-deps.sh's
# layer: numba's compiled code for umap-learn and pynndescent, kept in the image at $NUMBA_CACHE_DIR.
# Without it every `predict` container compiled them again on `import umap` (~10 s on 2 cores) before
# drawing umap.png. numba reuses an entry only on a CPU like the build machine's; elsewhere it compiles and
# writes its own entries, so the folder stays writable by uid 50000 and any uid in group 0.
set -eu
: "${NUMBA_CACHE_DIR:?set NUMBA_CACHE_DIR}"
mkdir -p "$NUMBA_CACHE_DIR"
# the call umap_plot.py makes (scanpy's defaults, a seed), on a few random cells
/opt/venv/bin/python - <<'PY'
import numpy as np
import umap

cells = np.random.default_rng(0).random((200, 16), dtype=np.float32)
umap.UMAP(n_neighbors=15, min_dist=0.5, random_state=0, n_jobs=1).fit_transform(cells)
PY
chown -R 50000:0 "$NUMBA_CACHE_DIR" && chmod -R g+rwX "$NUMBA_CACHE_DIR"
