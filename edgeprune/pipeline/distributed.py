"""Running under `torchrun`: one process group, rank 0 decides, every rank trains.

The budget search measures latency, which must happen once, on one process, with the machine
otherwise quiet; training is what parallelizes. So rank 0 runs the measuring stages and broadcasts
their results (the plan), all ranks run the recovery stage under DistributedDataParallel, and rank 0
alone measures the final model and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_from_env(backend: str = "gloo") -> DistContext:
    """Join the process group `torchrun` describes in the environment (gloo: CPU hosts); a plain
    launch gets a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistContext(dist.get_rank(), dist.get_world_size())


def rank0_then_broadcast(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its (picklable) result to every rank."""
    if not ctx.active:
        return fn()
    box: list[Any] = [fn() if ctx.is_rank0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
