"""torch.distributed glue: ranks, sharding and reductions. Without a process group, one rank.

Launched with ``torchrun``, ``init_from_env`` starts the process group (gloo on CPU, NCCL on
GPU). Rank 0 alone writes to disk; a failing rank raises in every rank at the next collective,
so all end and no partial bundle is published.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Start the process group if launched by torchrun (WORLD_SIZE > 1). Returns whether it did."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("MMDEPLOY_DIST_BACKEND", "") != "gloo" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def _device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); identity in one process."""
    if not active():
        return t
    buf = t.to(_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_ok(ok: bool, message: str = "") -> tuple[bool, str]:
    """Agree across ranks whether every rank succeeded; returns (all ok, first failing rank's message)."""
    if not active():
        return ok, message
    flags = all_reduce_sum(torch.tensor([0.0 if ok else 1.0], dtype=torch.float64))
    if flags.item() == 0:
        return True, ""
    msgs: list = [None] * world_size()
    dist.all_gather_object(msgs, (rank(), ok, message))
    failed = [f"rank {r}: {m}" for r, o, m in msgs if not o]
    return False, "; ".join(failed)


def barrier() -> None:
    if active():
        dist.barrier()
