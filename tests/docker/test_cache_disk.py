"""The venv cache on a disk too small for what goes into it: the install scripts stop before pip starts, with
one line naming what needs the space, how much, and where (pip's own "No space left on device" comes minutes
into an 8 GB install and leaves half a venv behind). The small disk is a real 64 MB tmpfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here ({mounted.stderr.strip()}): needs root, as the docker suite has")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_the_runner_venv_is_not_started_on_a_disk_too_small_for_it(small_disk):
    env = {**os.environ, "HELICAL_AIRFLOW_CACHE": str(small_disk)}
    result = subprocess.run(["bash", "-c", 'source scripts/lib.sh; ensure_venv runner "$1"', "_",
                             str(REPO / "requirements" / "runner.lock")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the runner virtualenv needs about 10 GB free in {small_disk}; that disk has 0 GB (free some "
        "space, or set HELICAL_AIRFLOW_CACHE to a folder on a larger disk)")
    assert not list(small_disk.glob("venv-runner-*")), "no half-built venv is left"
