"""Resource profiles: one YAML, read by name, overridden by flags, with clear errors."""

from __future__ import annotations

import pytest

from helical_runner import profiles
from helical_runner.errors import InputError


def test_every_profile_in_the_repo_loads_and_the_default_is_cpu():
    default, all_profiles = profiles.load_all()
    assert all_profiles[default].device == "cpu"
    for profile in all_profiles.values():
        assert profile.memory_limit_bytes > 0 and profile.max_input_bytes_int > 0 and profile.max_cells > 0
        assert (profile.device == "cuda") == (profile.gpus > 0) == (profile.queue == "gpu")


def test_flags_override_single_fields_and_unset_flags_keep_the_profile():
    base = profiles.load("gpu-16gb")
    changed = base.override(precision="bf16", batch_size=None)
    assert changed.precision == "bf16" and changed.batch_size == base.batch_size and changed.image == base.image


def test_unknown_profile_and_bad_precision_name_the_problem():
    with pytest.raises(InputError, match="unknown profile 'huge'; defined: cpu-large"):
        profiles.load("huge")
    with pytest.raises(InputError, match="precision 'fp8'"):
        profiles.load().override(precision="fp8")


@pytest.mark.parametrize("text, expected", [("8g", 8 * 1024**3), ("512m", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3)),
                                            (1024, 1024), ("100", 100), ("2GiB", 2 * 1024**3)])
def test_sizes_parse_like_docker(text, expected):
    assert profiles.parse_size(text) == expected


def test_profiles_file_errors_are_one_line(tmp_path):
    broken = tmp_path / "profiles.yaml"
    broken.write_text("default: a\nprofiles:\n  a: {device: cpu}\n")
    with pytest.raises(InputError, match="profile 'a' .* missing"):
        profiles.load(path=broken)


def test_max_cells_defaults_when_a_profiles_file_predates_it_and_must_be_a_positive_count(tmp_path):
    fields = ("image: x, queue: cpu, device: cpu, gpus: 0, precision: fp32, batch_size: 4, max_input_size: 512,"
              " cells_per_chunk: 100, memory_limit: 1g, max_input_bytes: 1g")
    older = tmp_path / "older.yaml"
    older.write_text(f"default: a\nprofiles:\n  a: {{{fields}}}\n")
    assert profiles.load(path=older).max_cells == profiles.DEFAULT_MAX_CELLS
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"default: a\nprofiles:\n  a: {{{fields}, max_cells: 1e6}}\n")
    with pytest.raises(InputError, match="profile 'a': max_cells must be a positive whole number, got '1e6'"):
        profiles.load(path=wrong)
