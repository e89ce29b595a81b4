"""What every command shares: run ids, scratch folders, the output prefix, version facts."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
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


LOCK_NAME = ".in-use"
UNLOCKED_GRACE_SECONDS = 3600  # a folder without its lock file yet: only a crash between mkdtemp and flock


@dataclass
class Scratch:
    """A private working folder under $HELICAL_SCRATCH (the mounted data folder in containers), held with an
    exclusive flock on its `.in-use` file for as long as the step runs. A step that is killed (worker lost,
    OOM, `docker stop`) can't clean up, but the kernel drops its lock: the next step to start on the same
    scratch folder removes every `helical-*` folder whose lock it can take, so a host's scratch doesn't fill
    up with killed runs' chunks."""

    path: Path
    _lock: object = None

    @classmethod
    def create(cls, run_id: str) -> "Scratch":
        root = scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80]
        path = Path(tempfile.mkdtemp(prefix=f"helical-{safe}-", dir=root))
        lock = open(path / LOCK_NAME, "w")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        sweep_abandoned(root, keep=path)
        return cls(path, lock)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def sweep_abandoned(root: Path, keep: Path) -> None:
    """Remove the scratch folders under `root` that no live step holds (their `.in-use` lock can be taken).
    Folders of other programs (not `helical-*`) and live steps' folders are never touched."""
    for folder in root.glob("helical-*"):
        if folder == keep or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its step is alive
                shutil.rmtree(folder, ignore_errors=True)
            finally:
                os.close(fd)
        except FileNotFoundError:  # no lock file: a folder of an older runner, or one being created now
            try:
                if time.time() - folder.stat().st_mtime < UNLOCKED_GRACE_SECONDS:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # locked: a live step's
            continue


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
