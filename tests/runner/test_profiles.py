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


PROFILE = ("image: x, queue: cpu, device: cpu, gpus: 0, precision: fp32, batch_size: 4, max_input_size: 2048,"
           " cells_per_chunk: 100, memory_limit: 1g, max_input_bytes: 1g")


def test_the_shipped_profiles_keep_scgpt_to_helicals_1200_tokens_and_geneformer_to_the_profile():
    for profile in profiles.load_all()[1].values():
        assert profile.for_family("scgpt").max_input_size == 1200
        assert profile.for_family("geneformer") == profile


def test_a_profiles_own_family_settings_win_over_the_files_and_flags_win_over_both(tmp_path, monkeypatch):
    from helical_runner import cli

    path = tmp_path / "profiles.yaml"
    path.write_text("families:\n  scgpt: {max_input_size: 1200, batch_size: 6}\ndefault: a\nprofiles:\n"
                    f"  a: {{{PROFILE}}}\n  b: {{{PROFILE}, families: {{scgpt: {{batch_size: 32}}}}}}\n")
    a, b = (profiles.load(name, path) for name in ("a", "b"))
    assert (a.for_family("scgpt").max_input_size, a.for_family("scgpt").batch_size) == (1200, 6)
    assert (b.for_family("scgpt").max_input_size, b.for_family("scgpt").batch_size) == (1200, 32)
    assert b.for_family("geneformer").batch_size == 4
    monkeypatch.setenv("HELICAL_PROFILES", str(path))
    parse = cli.build_parser().parse_args
    embed = ["embed", "--data", "x", "--output", "y", "--profile", "b"]
    runs = {"scgpt": cli._profile(parse([*embed, "--model", "scGPT_CP"])),
            "flag": cli._profile(parse([*embed, "--model", "scGPT_CP", "--batch-size", "3", "--max-input-size", "500"])),
            "geneformer": cli._profile(parse(embed))}
    assert (runs["scgpt"].batch_size, runs["scgpt"].max_input_size) == (32, 1200)
    assert (runs["flag"].batch_size, runs["flag"].max_input_size) == (3, 500)
    assert (runs["geneformer"].batch_size, runs["geneformer"].max_input_size) == (4, 2048)


@pytest.mark.parametrize("families, expected", [
    ("{scgpt: {queue: gpu}}", "families.scgpt sets queue; a family may set only precision, batch_size"),
    ("{scgpt: {precision: fp8}}", "precision 'fp8' is not one of"),
    ("[scgpt]", "'families' must map a model family to settings"),
])
def test_a_bad_families_section_is_one_line_naming_it(tmp_path, families, expected):
    path = tmp_path / "profiles.yaml"
    path.write_text(f"families: {families}\ndefault: a\nprofiles:\n  a: {{{PROFILE}}}\n")
    with pytest.raises(InputError, match=expected.replace("(", r"\(")):
        profiles.load(path=path)
