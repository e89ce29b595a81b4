"""Model files in helical's cache: used where they are, fetched through helical's downloader only when missing.

helical's own constructors ask its bucket for every file at every init and delete a cached file when that
check fails (offline, or a flaky network); the families here look at the cache first and call the
downloader for a missing file alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from helical_runner.errors import UnavailableError

log = logging.getLogger(__name__)


def ensure_cached(model: str, paths: list[Path], fetch: Callable[[Path], None], fetch_missing: bool = True) -> None:
    """Return when every path in `paths` is a file. Otherwise, with `fetch_missing`, call `fetch(path)` (the
    family's call into helical's downloader) for each missing one; UnavailableError (one line naming the file
    and the folder to pre-place it in) when a file is still missing or its download failed."""
    missing = [p for p in paths if not p.is_file()]
    if missing and fetch_missing:
        log.info("model %s: downloading %d missing file(s) into %s", model, len(missing), missing[0].parent)
        for path in missing:
            try:
                fetch(path)
            except Exception as exc:  # noqa: BLE001 - helical raises assorted network errors
                raise UnavailableError(f"model {model}: '{path.name}' is not in the cache {path.parent} and could "
                                       f"not be downloaded ({type(exc).__name__}); pre-place it there") from exc
        missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UnavailableError(f"model {model}: {', '.join(map(str, missing))} not in the cache")
