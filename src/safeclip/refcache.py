"""Frozen-reference cache: T0(t) and V0(v) computed once per model and dataset, kept on disk.

The references of the Safe-CLIP losses come from the encoders with their adapters off, whose
weights never change, so computing them once is exact and removes two of the six encoder passes
of every training step. The cache file is keyed by a fingerprint of the base weights, the
tokenizer and image preprocessing, and the records (texts, image paths, sizes and mtimes).

    refs = load_or_compute_references(text, vision, tokenizer, image_processor, records, cache_dir)
    refs["safe_text_ref"][batch["index"]]        # (B, D)

Under ``torchrun`` / ``accelerate launch`` (``shard=True``) each process embeds a share of the batches on its
own device and the shares are gathered, so N processes build the cache about N times faster.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from safeclip.data.quadruplets import Quadruplet
from safeclip.distributed import all_agree, world_size
from safeclip.eval.embed import embed_quadruplets, shard_rows
from safeclip.fingerprint import update_with_file, update_with_processors, update_with_tensors
from safeclip.models.lora import adapters_disabled, base_parameters

CACHE_VERSION = "2"  # 2: tensors named after the modality they embed (safe_text_ref)


def reference_fingerprint(text_model, vision_model, tokenizer, image_processor, records: Sequence[Quadruplet],
                          modalities: Sequence[str], precision: str = "no") -> str:
    """sha256 of everything the reference embeddings depend on (``precision``: the autocast they ran under)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    if precision not in ("no", ""):
        h.update(f"autocast={precision}".encode())
    for model in (text_model, vision_model):
        update_with_tensors(h, base_parameters(model))
    update_with_processors(h, tokenizer, image_processor)
    h.update(",".join(modalities).encode())
    for record in records:
        h.update((record.safe_text or "").encode())
        if record.safe_image is not None:
            update_with_file(h, record.safe_image)
    return h.hexdigest()


def load_or_compute_references(
    text_model, vision_model, tokenizer, image_processor, records: Sequence[Quadruplet], modalities: Sequence[str],
    cache_dir: str | os.PathLike, *, batch_size: int = 256, progress: bool = False, num_workers: int = 0,
    shard: bool = False, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    precision: str = "no",
) -> dict[str, torch.Tensor]:
    """``{"safe_text_ref": (N, D)[, "safe_image_ref": (N, D)]}``, from the cache or computed and cached.

    Computed where the encoders are (move them to the accelerator first), inside ``autocast()`` (the step's
    precision), with ``num_workers`` loader processes. With ``shard=True`` under ``torch.distributed`` every
    process must call this: each embeds its share of the batches, the shares are gathered (equal to the
    one-process cache) and the first process of each node writes the file; the cache is read only when every
    process sees it, so the processes never disagree about whether to compute. ``precision`` names what
    ``autocast`` does (accelerate's ``mixed_precision``: "no", "bf16", "fp16"); it is part of the cache key.
    """
    wanted = [m for m in ("safe_text", "safe_image") if m in modalities]
    key = reference_fingerprint(text_model, vision_model, tokenizer, image_processor, records, wanted, precision)
    path = Path(cache_dir) / f"references-{key[:24]}.safetensors"
    if all_agree(path.is_file()) if shard else path.is_file():
        return load_file(path)
    with adapters_disabled(text_model, vision_model):
        emb = embed_quadruplets(text_model, vision_model, tokenizer, image_processor, records, modalities=wanted,
                                batch_size=batch_size, progress=progress, num_workers=num_workers, shard=shard,
                                autocast=autocast)
    rank, world = (dist.get_rank(), world_size()) if shard and world_size() > 1 else (0, 1)
    mine = shard_rows(len(records), batch_size, rank, world)
    print(f"reference cache: rank {rank} of {world} embedded rows {mine.start}-{mine.stop} of {len(records)}", flush=True)
    refs = {f"{m}_ref": emb[m].contiguous() for m in wanted}
    if rank == 0 or os.environ.get("LOCAL_RANK", "0") == "0":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(refs, tmp)
        os.replace(tmp, path)
    return refs
