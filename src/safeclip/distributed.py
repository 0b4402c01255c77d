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
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
