"""Cross-process gathering (safeclip.distributed) on 2 CPU processes (gloo), checked against one process.

    pytest tests/unit/test_gather.py

Two processes each hold half of a global batch of 8. Gathering gives both the full ``(8, D)``
embeddings in rank order; the gradient reaches only the local half, so the sum over processes of
the local gradients is the full-batch gradient, and the data-parallel mean of ``P x loss`` equals
the single-process gradient of the full-batch loss (what ``safeclip.train.backward_loss`` does).
"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from safeclip.distributed import gather_with_grad, world_size
from safeclip.losses import negative_mean_cosine, symmetric_info_nce

WORLD, BATCH, DIM = 2, 8, 5


def problem():
    """The same weight and global batch on every process: embeddings ``x @ W``, references ``y``."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, DIM, generator=generator)
    return weight, torch.randn(BATCH, 6, generator=generator), torch.randn(BATCH, DIM, generator=generator)


def objective(embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    return symmetric_info_nce(embeddings, references, 0.1) + negative_mean_cosine(embeddings, references)


def worker(rank: int, init_file: str, out_dir: str, gather: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        weight, x, y = problem()
        weight.requires_grad_(True)
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        embeddings, references = x[local] @ weight, y[local]  # (B/P, D) with grad, (B/P, D) constant
        if gather:
            embeddings, references = gather_with_grad(embeddings), gather_with_grad(references)
        loss = objective(embeddings, references)
        (loss * (world_size() if gather else 1)).backward()
        dist.all_reduce(weight.grad)  # what DistributedDataParallel does: the mean over processes
        weight.grad /= WORLD
        torch.save({"loss": loss.detach(), "grad": weight.grad, "embeddings": embeddings.detach()}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def run(tmp_path, gather: bool) -> list[dict]:
    out = tmp_path / ("gathered" if gather else "local")
    out.mkdir()
    mp.spawn(worker, args=(str(tmp_path / f"init-{out.name}"), str(out), gather), nprocs=WORLD, join=True)
    return [torch.load(out / f"{rank}.pt") for rank in range(WORLD)]


def test_one_process_is_the_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert world_size() == 1 and gather_with_grad(x) is x and gather_with_grad(None) is None


def test_gathered_loss_and_gradient_equal_the_single_process_ones(tmp_path):
    weight, x, y = problem()
    weight.requires_grad_(True)
    full = objective(x @ weight, y)
    full.backward()
    gathered = run(tmp_path, gather=True)
    for rank, result in enumerate(gathered):
        torch.testing.assert_close(result["embeddings"], (x @ weight).detach(), rtol=1e-6, atol=1e-6)  # rank order
        torch.testing.assert_close(result["loss"], full.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(result["grad"], weight.grad, rtol=1e-5, atol=1e-6)
    # without gathering each process sees only its half: another loss and another gradient
    local = run(tmp_path, gather=False)
    assert not torch.allclose(local[0]["grad"], weight.grad, rtol=1e-3, atol=1e-4)


def test_resolve_device_and_no_launcher():
    """``auto`` is this process's GPU under a launcher, else the CPU; names pass through; a bad one is refused."""
    import os

    import pytest

    from safeclip.distributed import join_launched_processes, resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if "WORLD_SIZE" not in os.environ:
        assert join_launched_processes() == (0, 1) and not dist.is_initialized()
