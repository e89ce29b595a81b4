"""What every command shares: run ids, scratch folders, the output prefix, version facts."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helical_runner import __version__

from helical_runner.data import storage
from helical_runner.outputs.report import REPORT_NAME
from helical_runner.data.storage import Location


def run_id_for(output: Location, explicit: str | None) -> str:
    """`--run-id`, else $HELICAL_RUN_ID (set by the DAGs), else the output prefix's last part."""
    return explicit or os.environ.get("HELICAL_RUN_ID") or output.name or "run"


def scratch_root() -> Path:
    """Where scratch goes: $HELICAL_SCRATCH (the mounted data folder's scratch/ in containers), else the
    system's temp folder. Not created here."""
    return Path(os.environ.get("HELICAL_SCRATCH") or tempfile.gettempdir())


@dataclass
class Scratch:
    """A private working folder under $HELICAL_SCRATCH (the mounted data folder in containers)."""

    path: Path

    @classmethod
    def create(cls, run_id: str) -> "Scratch":
        root = scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80]
        return cls(Path(tempfile.mkdtemp(prefix=f"helical-{safe}-", dir=root)))

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_json_if_present(loc: Location) -> dict | None:
    """An earlier run's JSON output (report, manifest), or None when absent or unreadable."""
    if not storage.exists(loc):
        return None
    try:
        return json.loads(storage.get_bytes(loc))
    except json.JSONDecodeError:
        return None


def previous_report(output: Location) -> dict | None:
    return read_json_if_present(output.join(REPORT_NAME))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"helical_runner": __version__}
    for package in ("helical", "torch", "transformers", "anndata"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found
