"""torch.distributed glue: ranks, sharding, reductions and failure agreement. Without a process group, one rank.

Launched with ``torchrun``, ``init_from_env`` starts the process group: NCCL when every local
rank has its own GPU, else gloo (``MMDEPLOY_DIST_BACKEND=gloo|nccl`` overrides), with a
timeout of ``MMDEPLOY_DIST_TIMEOUT_S`` seconds (default 1800) on every collective. Rank 0
alone writes to disk.

A failing rank must not leave the others waiting in a collective. Per-rank work runs inside
``agreed()``: at its end every rank learns whether every rank succeeded, and if one did not,
all raise the same ``RankFailed`` naming the failing rank's error, before any rank 0 write.
A rank that dies outright (killed, segfault) makes the others' next collective fail, which
is reported as a lost rank rather than a hang.
"""

from __future__ import annotations

import atexit
import datetime
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from mmdeploy.errors import MMDeployError

DEFAULT_TIMEOUT_S = 1800.0
_SOURCE_LOCATION = re.compile(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")  # gloo's "[.../pair.cc:537] " prefix


class RankFailed(MMDeployError):
    """Raised on every rank when one rank failed: the same message everywhere, so only rank 0 prints it."""


def init_from_env() -> bool:
    """Start the process group if launched by torchrun (WORLD_SIZE > 1). Returns whether it did."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise MMDeployError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed", "run one process, or install a PyTorch with distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        torch.cuda.set_device(local_rank % gpus)  # --device cuda means this rank's GPU
    backend = os.environ.get("MMDEPLOY_DIST_BACKEND", "").strip().lower() or _default_backend(gpus)
    if backend not in ("gloo", "nccl"):
        raise MMDeployError(f"MMDEPLOY_DIST_BACKEND={backend!r} is not a backend mmdeploy uses", "set it to gloo or nccl, or unset it")
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=_timeout_s()))
    except (RuntimeError, ValueError) as exc:  # rendezvous timed out, bad MASTER_ADDR/PORT, ...
        raise MMDeployError(f"cannot start torch.distributed ({backend}, rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']}): {_short(exc)}",
                            "launch every rank with torchrun and check --master-addr/--master-port (or --rdzv-endpoint)") from exc
    atexit.register(_shutdown)
    return True


def _default_backend(gpus: int) -> str:
    # NCCL needs one GPU per rank; every rank on a node must choose the same backend.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return "nccl" if gpus and local_world <= gpus else "gloo"


def _timeout_s() -> float:
    text = os.environ.get("MMDEPLOY_DIST_TIMEOUT_S", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise MMDeployError(f"MMDEPLOY_DIST_TIMEOUT_S={text!r} is not a positive number of seconds", "e.g. MMDEPLOY_DIST_TIMEOUT_S=1800")
    return value


def _shutdown() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # at exit after a failure: nothing left to report to
            pass


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: list) -> list:
    """This rank's share of ``items``: every world_size-th, starting at its rank."""
    return items[rank() :: world_size()]


def _device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a collective that failed because a peer vanished or timed out into one clear error."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed.DistError and backend errors are RuntimeErrors
        raise MMDeployError(f"rank {rank()} lost contact with another rank while {what}: {_short(exc)}",
                            f"another rank crashed, was killed or took longer than MMDEPLOY_DIST_TIMEOUT_S={_timeout_s():g} s; "
                            "see its log") from exc


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); identity in one process."""
    if not active():
        return t
    buf = t.to(_device())
    with _collective("adding up results"):
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    with _collective("gathering results"):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (so decisions that read local files are the same everywhere)."""
    if not active():
        return obj
    box = [obj]
    with _collective("receiving rank 0's decisions"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ok(ok: bool, message: str = "") -> tuple[bool, str]:
    """Agree across ranks whether every rank succeeded; returns (all ok, the failing ranks' messages)."""
    failures = _agree(None if ok else (message, ""))
    return not failures, "; ".join(f"rank {r}: {m}" for r, m, _ in failures)


def _agree(failure: tuple[str, str] | None) -> list[tuple[int, str, str]]:
    """Every rank's (rank, message, hint) of failure; one cheap all-reduce when all succeeded."""
    if not active():
        return [] if failure is None else [(0, *failure)]
    flags = all_reduce_sum(torch.tensor([0.0 if failure is None else 1.0], dtype=torch.float64))
    if flags.item() == 0:
        return []
    return [(r, *f) for r, f in enumerate(all_gather_object(failure)) if f is not None]


@contextmanager
def agreed() -> Iterator[None]:
    """Run a block of per-rank work (no collectives inside), then agree that every rank succeeded.

    If any rank's block raised, every rank raises the same ``RankFailed`` naming the failed
    rank(s) and the first one's error; the failed rank chains its own exception. In one
    process this does nothing: exceptions pass through unchanged.
    """
    if not active():
        yield
        return
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (any failure must reach the other ranks)
        failures = _agree(_describe(exc))
        raise _rank_failed(failures) from exc
    failures = _agree(None)
    if failures:
        raise _rank_failed(failures)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, MMDeployError):
        return exc.message.replace("\n", " "), exc.hint
    return f"{type(exc).__name__}: {_short(exc, 300)}", "rerun with MMDEPLOY_DEBUG=1 for the failing rank's traceback"


def _short(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, without the C++ source locations backends put in it."""
    return " ".join(_SOURCE_LOCATION.sub("", str(exc)).split())[:limit]


def _rank_failed(failures: list[tuple[int, str, str]]) -> RankFailed:
    first, message, hint = failures[0]
    others = [r for r, _, _ in failures[1:]]
    also = f" (rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} failed too)" if others else ""
    return RankFailed(f"rank {first} of {world_size()} failed, so every rank stopped: {message}{also}", hint)
