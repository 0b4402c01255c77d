"""Cross-process gathering for the contrastive losses (data-parallel training).

With ``loss.gather_across_processes`` every process computes every loss term over the global
batch: embeddings from all processes are all-gathered, the local slice is swapped back for the
local tensor so that gradients reach this process's encoders, and the other slices are constants.
Each process then holds the gradient of the full-batch loss for its own items only; data-parallel
training averages gradients over processes, so the loss is scaled by the number of processes in the
backward pass (see :func:`safeclip.train.backward_loss`) and one optimizer step
equals the single-process step on the same global batch (the idea of open_clip's gathered loss).

    accelerate launch --num_processes 2 -m safeclip.cli train --config ... loss.gather_across_processes=true
    embeddings = gather_with_grad(local_embeddings)        # (B_local, D) -> (P * B_local, D)

:func:`gather_rows` gathers blocks of different sizes without gradient (sharded embedding of a split).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from safeclip.errors import ConfigError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, D)`` per process -> ``(P * B, D)`` in rank order; only the local slice carries gradient."""
    if x is None or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows of every process in rank order, without gradient: ``(counts[rank], D)`` -> ``(sum(counts), D)``.

    Processes may hold different numbers of rows (``counts``, known to all); each block is padded to the
    largest for the all-gather and trimmed after. ``x`` must live where the backend gathers (NCCL: the GPU).
    """
    if world_size() == 1:
        return x
    padded = x.new_zeros(max(counts), *x.shape[1:])
    padded[: len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def all_agree(flag: bool) -> bool:
    """True only when ``flag`` is true on every process (one all-reduce; the flag itself on one process)."""
    if world_size() == 1:
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def join_launched_processes() -> tuple[int, int]:
    """Join the process group ``torchrun`` / ``accelerate launch`` describe in the environment: ``(rank, world)``.

    Outside a launcher (no ``WORLD_SIZE`` above 1) this is ``(0, 1)`` and nothing is started. On GPUs each
    process takes the GPU of its ``LOCAL_RANK`` and the group uses NCCL; on CPUs, gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU (``cuda:LOCAL_RANK`` under a launcher) when CUDA is available, else the CPU;
    anything else is taken as a device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError as err:
            raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")
