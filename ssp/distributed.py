"""Process-group plumbing for multi-process feature extraction (``torchrun``).

``torchrun --nproc_per_node N -m ssp.cli.fewshot ...`` starts N copies of the CLI with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env`
joins them into one process group (gloo on CPU, NCCL on GPUs, one GPU per local rank).
:func:`ssp.features.extract.extract_features` then shards the batches over the ranks and gathers the
outputs so every rank holds the same features, bit for bit those of a single process (each
batch is the one a single process would encode, and the gathered batches are reduced in
the single-process order). Only rank 0 writes files.

Without a process group (or with one process) every function here is a cheap no-op:
rank 0 of a world of 1.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
from ssp._utils.devices import resolve_device

__all__ = [
    "init_from_env",
    "shutdown",
    "is_active",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "all_gather_object",
    "broadcast_object",
]

# Ranks wait for each other at every collective; a long (but finite) timeout lets rank 0
# run slow work (e.g. a large test split) while the others wait for the next batch round.
_TIMEOUT = datetime.timedelta(hours=2)
_owned = False  # True when init_from_env created the process group (then shutdown destroys it)


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def is_active() -> bool:
    """True when a process group with more than one process is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0: the only rank that writes files and prints results."""
    return rank() == 0


def init_from_env(device: str | torch.device | None = "auto") -> torch.device | None:
    """Join the process group described by torchrun's environment variables.

    Returns the device this rank should use (``cuda:LOCAL_RANK`` when ``device`` resolves to
    an unindexed CUDA device), or ``None`` when ``WORLD_SIZE`` is unset or 1 (nothing done).
    The backend is NCCL for CUDA devices, gloo otherwise.
    """
    global _owned
    if env_world_size() <= 1:
        return None
    import torch.distributed as dist


    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return dev
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    _owned = True
    return dev


def shutdown() -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    global _owned
    import torch.distributed as dist

    if _owned and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_active():
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a group).

    Objects are pickled; CPU tensors inside them travel as they are."""
    if not is_active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a group)."""
    if not is_active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
