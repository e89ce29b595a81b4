"""What the process is using: peak memory of this process (and its children), CUDA memory."""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cuda_memory_bytes() -> tuple[int, int]:
    """(allocated, reserved) CUDA memory, or zeros when torch has no CUDA device or is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0, 0
    return int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())


def peak_memory() -> dict:
    """report.json's peak_memory: {rss_bytes, cuda_allocated_bytes, cuda_reserved_bytes}."""
    allocated, reserved = cuda_memory_bytes()
    return {"rss_bytes": peak_rss_bytes(), "cuda_allocated_bytes": allocated, "cuda_reserved_bytes": reserved}
