"""Data parallel fine-tuning in one container: one process per GPU (gloo on CPU for tests).

`helical-runner finetune` with `--nproc N` (or a profile with `gpus: N > 1`) starts N copies of itself
with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set (torchrun's variables), waits for them and
returns the first failure's exit code. Every rank reads every chunk and trains its share of each
*global* batch (cells rank, rank+N, ...), so the batches, the schedule and a resume are exactly those of
one process; DistributedDataParallel averages the gradients. Rank 0 alone writes checkpoints, reports,
the model and metrics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where ranks talk, so `chunk` never loads it (~0.5 GB of memory)
    import torch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        return cls(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))

    def init(self, device: torch.device) -> None:
        import torch.distributed

        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, rank=self.rank, world_size=self.world)

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed

        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed

            torch.distributed.barrier()

    def shutdown(self) -> None:
        if not self.enabled:
            return
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def in_rank() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(argv: list[str], world: int, module: str = "helical_runner") -> int:
    """Run `python -m <module> <argv>` (the runner's CLI by default) as `world` ranks; the first non-zero
    exit code wins."""
    port = _free_port()
    children = []
    for rank in range(world):
        env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world)),  # as torchrun: no oversubscription
               **os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        children.append(subprocess.Popen([sys.executable, "-m", module, *argv], env=env))
    code = 0
    try:
        while any(child.poll() is None for child in children):
            failed = [child.returncode for child in children if child.returncode not in (None, 0)]
            if failed:  # one rank failed: the others would wait for it forever in a collective
                code = failed[0]
                for child in children:
                    if child.poll() is None:
                        child.terminate()
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
    return code or next((c.returncode for c in children if c.returncode), 0)
