"""`helical-runner info`: every model and whether it can run here, or what one model is and where it would
run, read offline from helical's cache."""

from __future__ import annotations

import json
from dataclasses import asdict

from helical_runner.models.geneformer.files import locate
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
    import torch

    from helical_runner import models

    family = models.family_of(model_name).FAMILY
    files = locate(model_name)
    config = json.loads((files.model_dir / "config.json").read_text())
    weights = next((p for p in files.model_dir.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin")), None)
    n_params = _count_parameters(weights) if weights else None
    return {
        "model": files.name,
        "family": family,
        "version": files.version,
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "attention_heads": config.get("num_attention_heads"),
        "vocabulary_size": config.get("vocab_size"),
        "input_size": files.input_size,
        "special_tokens": files.special_token,
        "parameters": n_params,
        "model_dir": str(files.model_dir),
        "profile": profile.name,
        "device": profile.device,
        "precision": profile.precision,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "versions": versions(),
    }


def _count_parameters(weights) -> int:
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
