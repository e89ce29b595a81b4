"""Resource profiles from `config/profiles.yaml`, read with pyyaml (the runner package is not installed here).

The file is the single source of truth; this module only reads it. Its path is `$HELICAL_PROFILES`, else the
repo's config/ next to dags/ (the compose file mounts ./config and sets the variable).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

FIELDS = ("image", "queue", "device", "gpus", "precision", "batch_size", "max_input_size", "cells_per_chunk",
          "memory_limit", "max_input_bytes")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ProfileError(ValueError):
    """The profiles file is missing, malformed, or names no such profile."""


def profiles_path() -> Path:
    env = os.environ.get("HELICAL_PROFILES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "config" / "profiles.yaml"


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> tuple[str, dict[str, dict]]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profiles file {path}: {exc}") from None
    profiles = raw.get("profiles") or {}
    for name, values in profiles.items():
        missing = [f for f in FIELDS if f not in (values or {})]
        if missing:
            raise ProfileError(f"profile '{name}' in {path} lacks {', '.join(missing)}")
    default = raw.get("default")
    if default not in profiles:
        raise ProfileError(f"default profile '{default}' is not defined in {path}")
    return default, {name: {"name": name, **values} for name, values in profiles.items()}


def load_all(path: Path | None = None) -> tuple[str, dict[str, dict]]:
    """(default name, {name: profile dict}); re-read when the file changes."""
    path = path or profiles_path()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise ProfileError(f"profiles file {path} not found (set HELICAL_PROFILES)") from None
    return _load(str(path), mtime)


def get(name: str | None, path: Path | None = None) -> dict:
    default, profiles = load_all(path)
    name = name or default
    if name not in profiles:
        raise ProfileError(f"unknown profile '{name}'; known: {', '.join(sorted(profiles))}")
    return dict(profiles[name])


def queues(path: Path | None = None) -> list[str]:
    """Every Celery queue some profile runs on, sorted: the DAG has one branch per queue."""
    return sorted({p["queue"] for p in load_all(path)[1].values()})


def parse_size(text: str | int) -> int:
    """Docker-style sizes ('8g', '512m', 1024) to bytes."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower().removesuffix("b").removesuffix("i") or "0"
    unit = value[-1] if value[-1] in _UNITS else ""
    try:
        return int(float(value[: len(value) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise ProfileError(f"size '{text}' is not a number with an optional k/m/g/t unit") from None


def next_larger(name: str, path: Path | None = None) -> dict | None:
    """The profile to suggest after an out-of-memory kill: the smallest memory_limit above `name`'s, on the
    same device if one has it (a CPU run is pointed at a larger CPU profile), else on any; among equal caps,
    one on the same queue first (cpu-small, not a worker host class's cpu-remote, for a run on queue cpu);
    None if none."""
    profiles = load_all(path)[1]
    this = profiles[name]
    cap = parse_size(this["memory_limit"])
    larger = [p for p in profiles.values() if parse_size(p["memory_limit"]) > cap]
    same_device = [p for p in larger if p["device"] == this["device"]]
    return min(same_device or larger, default=None,
               key=lambda p: (parse_size(p["memory_limit"]), p["queue"] != this["queue"], p["name"]))


def for_cpu_step(profile: dict, path: Path | None = None) -> dict:
    """The profile as a CPU-only step (chunk, on queue cpu) applies it: same memory cap, no GPUs, and for a
    GPU profile the image of a CPU profile (the default one first), which every cpu worker's host has."""
    if profile["device"] == "cpu" and not profile.get("gpus"):
        return profile
    default, profiles = load_all(path)
    cpu_images = [p["image"] for p in (profiles[default], *profiles.values()) if p["device"] == "cpu"]
    return {**profile, "device": "cpu", "gpus": 0, "image": cpu_images[0] if cpu_images else profile["image"]}
