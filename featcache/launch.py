"""Which process of a distributed launch this is, read from the variables torchrun (and ``srun torchrun``) sets.

Kept free of torch imports: the CLI reads it to label a rank's messages before anything heavy loads.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["Launch", "shard_bounds", "TIMEOUT_ENV"]

TIMEOUT_ENV = "FEATCACHE_DIST_TIMEOUT"  # seconds a rank waits for the others at a meeting point (default 1800)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of rows [0, n): sizes differ by at most one, nothing padded or repeated
    (a ``DistributedSampler`` pads to equal sizes, which would duplicate ids in the store)."""
    return n * rank // world_size, n * (rank + 1) // world_size


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch: global rank, world size, rank on this node."""

    rank: int
    world_size: int
    local_rank: int
    host: str

    @classmethod
    def from_env(cls) -> Launch | None:
        """The launch torchrun describes in the environment; None for a plain single process (or a world of 1)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (they are set by torchrun)") from None
        if world <= 1:
            return None
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            raise InputError(f"WORLD_SIZE={world} but RANK or MASTER_ADDR is not set: launch with torchrun (or unset "
                             "WORLD_SIZE for a single process)")
        if not 0 <= rank < world or local < 0:
            raise InputError(f"RANK={rank}, LOCAL_RANK={local} do not fit WORLD_SIZE={world}")
        return cls(rank, world, local, socket.gethostname())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}"

    def device(self, requested: str) -> torch.device:
        """Each rank on its own GPU (``LOCAL_RANK``) for ``auto`` or ``cuda``; ``cuda:N`` and ``cpu`` as given."""
        import torch

        from .runtime import resolve_device

        if requested in ("auto", "cuda") and torch.cuda.is_available():
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise InputError(f"{self.label()} has LOCAL_RANK {self.local_rank} but {self.host} has {count} GPU(s): "
                                 f"launch at most {count} processes per node, or name one with --device cuda:N")
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        dev = resolve_device(requested)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)
        return dev
