"""`helical-runner info`: every model and whether it can run here, or what one model is and where it would
run, read offline from helical's cache."""

from __future__ import annotations

from dataclasses import asdict

from helical_runner.profiles import Profile
from helical_runner.runs import versions


def catalogue_info(profile: Profile) -> dict:
    """Every model the runner runs (family, name, embedding and input size, fine-tunes, cached, missing files)
    and helical's families it doesn't run yet, with why; then the device this profile would use."""
    import torch

    from helical_runner import models

    return {
        "models": [asdict(row) for row in models.catalogue()],
        "not_supported": [{"family": family, "why_not": why} for family, why in models.NOT_YET.items()],
        "profile": profile.name, "device": profile.device, "precision": profile.precision,
        "cuda_available": torch.cuda.is_available(), "versions": versions(),
    }


def model_info(model_name: str, profile: Profile) -> dict:
    """One model: its `info` row (family, sizes, fine-tunes, cache state, missing files), what its family
    can say of its files when cached (`details(name)`: layers, width, heads, vocabulary, parameters, folder),
    and the device this profile would use. InputError listing every model for an unknown name."""
    import torch

    from helical_runner import models

    family = models.family_of(model_name)
    row = family.describe(model_name)
    details = family.details(model_name) if row.cached and hasattr(family, "details") else {}
    return {
        "model": model_name, **{k: v for k, v in asdict(row).items() if k != "name"}, **details,
        "profile": profile.name,
        "device": profile.device,
        "precision": profile.precision,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "versions": versions(),
    }


def count_parameters(weights) -> int:
    """Parameters in a .safetensors file (read from its header) or a torch state dict file."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        total = 0
        with safe_open(weights, framework="pt") as handle:
            for key in handle.keys():
                total += _prod(handle.get_slice(key).get_shape())
        return total
    import torch

    return sum(t.numel() for t in torch.load(weights, map_location="cpu", weights_only=True).values())


def _prod(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
