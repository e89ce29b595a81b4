"""Resource profiles from `config/profiles.yaml`: the runner reads one by name, flags override it."""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from helical_runner.errors import InputError

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MAX_CELLS = 50_000_000  # a profiles file written before max_cells existed gets this cap
# what a model family may set for its runs: how the runner feeds the model, not where it runs (image, queue,
# device and memory were fixed when the task was placed)
FAMILY_FIELDS = ("precision", "batch_size", "max_input_size", "cells_per_chunk")


def default_profiles_path() -> Path:
    """`$HELICAL_PROFILES`, else the repo's config/ (also copied to that path in the runner image)."""
    env = os.environ.get("HELICAL_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "config" / "profiles.yaml"


def parse_size(text: str | int) -> int:
    """Docker-style sizes ('8g', '512m', 1024) to bytes."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower().removesuffix("ib").removesuffix("b") or "0"
    unit = value[-1] if value[-1] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        return int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise InputError(f"size '{text}' is not a number with an optional k/m/g/t unit") from None


@dataclass(frozen=True)
class Profile:
    name: str
    image: str
    queue: str
    device: str  # cpu | cuda
    gpus: int  # GPUs per container; >1 means data parallel
    precision: str  # fp32 | bf16 | fp16
    batch_size: int  # cells per step (with gpus > 1, shared out among the GPUs)
    max_input_size: int  # tokens kept per cell
    cells_per_chunk: int  # rows per streamed chunk
    memory_limit: str  # container cap, Docker syntax
    max_input_bytes: str  # inputs larger than this are refused up front
    max_cells: int = DEFAULT_MAX_CELLS  # inputs declaring more cells than this are refused up front
    # per model family, FAMILY_FIELDS that replace this profile's for that family's runs: the file's top-level
    # `families:` section, then the profile's own `families:` on top
    families: dict = field(default_factory=dict)

    @property
    def memory_limit_bytes(self) -> int:
        return parse_size(self.memory_limit)

    @property
    def max_input_bytes_int(self) -> int:
        return parse_size(self.max_input_bytes)

    def override(self, **changes: Any) -> "Profile":
        """The profile with every non-None override applied (flags left unset keep the profile's value)."""
        updated = replace(self, **{k: v for k, v in changes.items() if v is not None})
        if updated.precision not in PRECISIONS:
            raise InputError(f"precision '{updated.precision}' is not one of {', '.join(PRECISIONS)}")
        if not isinstance(updated.max_cells, int) or isinstance(updated.max_cells, bool) or updated.max_cells < 1:
            raise InputError(f"profile '{updated.name}': max_cells must be a positive whole number, "
                             f"got {updated.max_cells!r}")
        return updated

    def for_family(self, family: str) -> "Profile":
        """The profile as a run of model family `family` gets it (flags are applied after this)."""
        return self.override(**self.families.get(family, {}))


def _families(raw, where: str) -> dict:
    """A `families:` section ({family: {field: value}}), checked: one line naming what is wrong."""
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise InputError(f"{where}: 'families' must map a model family to settings, "
                         "e.g. scgpt: {max_input_size: 1200}")
    for family, values in raw.items():
        unknown = set(values) - set(FAMILY_FIELDS)
        if unknown:
            raise InputError(f"{where}: families.{family} sets {', '.join(sorted(unknown))}; a family may set only "
                             f"{', '.join(FAMILY_FIELDS)}")
    return raw


def load_all(path: Path | None = None) -> tuple[str, dict[str, Profile]]:
    path = path or default_profiles_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"profiles file '{path}' not found (set HELICAL_PROFILES)") from None
    except yaml.YAMLError as exc:
        raise InputError(f"profiles file '{path}' is not valid YAML: {exc}") from None
    names = {f.name for f in fields(Profile)} - {"name"}
    required = {f.name for f in fields(Profile) if f.default is MISSING and f.default_factory is MISSING} - {"name"}
    shared = _families(raw.get("families"), f"profiles file '{path}'")
    profiles = {}
    for name, values in (raw.get("profiles") or {}).items():
        missing = required - set(values)
        unknown = set(values) - names
        if missing or unknown:
            raise InputError(f"profile '{name}' in '{path}': missing {sorted(missing)}, unknown {sorted(unknown)}")
        own = _families(values.pop("families", None), f"profile '{name}' in '{path}'")
        merged = {family: {**shared.get(family, {}), **own.get(family, {})} for family in {*shared, *own}}
        profile = Profile(name=name, **values, families=merged).override()
        for family in merged:  # a bad value (precision 'fp8') fails when the file is read, not at some run
            profile.for_family(family)
        profiles[name] = profile
    default = raw.get("default")
    if default not in profiles:
        raise InputError(f"default profile '{default}' in '{path}' is not defined")
    return default, profiles


def load(name: str | None = None, path: Path | None = None) -> Profile:
    default, profiles = load_all(path)
    name = name or default
    if name not in profiles:
        raise InputError(f"unknown profile '{name}'; defined: {', '.join(sorted(profiles))}")
    return profiles[name]
