"""Device and mixed-precision choices for training and inference.

fp16 trains under `torch.autocast` with a GradScaler (fp16 gradients underflow without loss scaling);
bf16 has fp32's exponent range and needs no scaler; fp32 runs plain. The weights stay fp32 throughout
(no `model.half()`): autocast casts per op, and the optimizer steps full-precision master weights.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from helical_runner.errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(requested: str) -> torch.device:
    """The profile's device, or a clear error when it asks for CUDA on a machine without it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{requested}' requested but CUDA is not available here; "
                         "use a CPU profile (e.g. --profile cpu-small) or run on a GPU worker")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise InputError(f"device '{requested}' is not cpu, cuda, cuda:N or auto")
    return torch.device(requested)


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def uses_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # A disabled scaler is a no-op passthrough, so the loop has one code path for every precision.
        return torch.amp.GradScaler(self.device.type, enabled=self.uses_scaler)


def resolve(name: str, device: torch.device) -> Precision:
    if name not in DTYPES:
        raise InputError(f"precision '{name}' is not one of {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("precision 'bf16' needs an Ampere or newer GPU; use --precision fp16 on this one")
    return Precision(name=name, device=device)
