"""`helical-runner info`: what a model is and where it would run, read offline from helical's cache."""

from __future__ import annotations

import json

from helical_runner.model_files import locate
from helical_runner.profiles import Profile
from helical_runner.runs import versions


def model_info(model_name: str, profile: Profile) -> dict:
    import torch

    files = locate(model_name)
    config = json.loads((files.model_dir / "config.json").read_text())
    weights = next((p for p in files.model_dir.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin")), None)
    n_params = _count_parameters(weights) if weights else None
    return {
        "model": files.name,
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
