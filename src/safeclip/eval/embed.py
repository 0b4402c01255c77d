"""Embed quadruplet records or image files with a CLIP bundle (any encoders: base, with adapters, merged).

    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records)
    emb["safe_text"]  # (N, D) float32 on CPU; keys only for the modalities the records carry
    image_emb = encode_image_files(bundle.vision, bundle.image_processor, paths, num_workers=8)  # (N, D)

Images are streamed: decoded and preprocessed batch by batch (in loader workers when asked), so memory
holds one batch of pixels plus the ``(N, D)`` embeddings, however many images there are. Under
``torchrun`` / ``accelerate launch``, ``shard=True`` splits the batches across processes and gathers them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from safeclip.data.loader import QuadrupletCollator, QuadrupletDataset, load_rgb
from safeclip.data.quadruplets import MODALITIES, Quadruplet
from safeclip.distributed import gather_rows, world_size
from safeclip.models.clip import encode_pixel_batch, encode_token_batch


def shard_rows(rows: int, batch_size: int, rank: int, world: int) -> range:
    """Process ``rank``'s rows out of ``world``: a contiguous block of whole batches (the last may be short).

    Batches are dealt in contiguous blocks, so the shards hold exactly the batches one process would form
    (same items, same text padding), and their embeddings are the one-process ones bit for bit.
    """
    batches = -(-rows // batch_size)
    first, last = batches * rank // world, batches * (rank + 1) // world
    return range(min(first * batch_size, rows), min(last * batch_size, rows))


@torch.no_grad()
def embed_quadruplets(
    text_model: torch.nn.Module,
    vision_model: torch.nn.Module,
    tokenizer,
    image_processor,
    records: Sequence[Quadruplet],
    *,
    modalities: Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool = False,
    dataset: QuadrupletDataset | None = None,
    num_workers: int = 0,
    shard: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """Projected embeddings ``(N, D)`` (float32, CPU) of each modality of ``records``.

    The encoders run where their weights are (move them to the GPU first), inside ``autocast()`` (pass the
    training step's, e.g. ``accelerator.autocast``, for the same precision), fed by ``num_workers`` loader
    processes. With ``shard=True`` under ``torch.distributed`` (``torchrun`` / ``accelerate launch``; every
    process must call it) process r embeds only :func:`shard_rows` and the shards are all-gathered: every
    process gets all N rows, equal to the one-process result.
    """
    if modalities is None:
        modalities = tuple(m for m in MODALITIES if all(getattr(r, m) is not None for r in records))
    dataset = dataset or QuadrupletDataset(records, image_processor, modalities)
    rank, world = (dist.get_rank(), world_size()) if shard and world_size() > 1 else (0, 1)
    rows = shard_rows(len(dataset), batch_size, rank, world)
    device = next(text_model.parameters()).device
    loader = DataLoader(Subset(dataset, rows), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=QuadrupletCollator(tokenizer), pin_memory=device.type == "cuda")
    vision_dtype = next(vision_model.parameters()).dtype
    was_training = (text_model.training, vision_model.training)
    text_model.eval()
    vision_model.eval()
    out: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    for batch in tqdm(loader, desc="embedding", disable=not progress, leave=False):
        with autocast():
            for side in ("safe", "unsafe"):
                if f"{side}_text" in out:
                    emb = encode_token_batch(text_model, batch[f"{side}_input_ids"].to(device, non_blocking=True),
                                             batch[f"{side}_attention_mask"].to(device, non_blocking=True))
                    out[f"{side}_text"].append(emb.float())
                if f"{side}_image" in out:
                    emb = encode_pixel_batch(vision_model, batch[f"{side}_pixels"].to(device, vision_dtype, non_blocking=True))
                    out[f"{side}_image"].append(emb.float())
    text_model.train(was_training[0])
    vision_model.train(was_training[1])
    width = {m: (text_model if m.endswith("text") else vision_model).config.projection_dim for m in modalities}
    local = {m: torch.cat(chunks) if chunks else torch.empty(0, width[m], device=device) for m, chunks in out.items()}
    if world > 1:  # sorted: every process issues its collectives in the same order
        counts = [len(shard_rows(len(dataset), batch_size, r, world)) for r in range(world)]
        local = {m: gather_rows(local[m], counts) for m in sorted(local)}
    return {m: local[m].cpu() for m in modalities}


class ImageFiles(Dataset):
    """Preprocessed ``(3, H, W)`` pixels of image files, loaded one at a time (a missing file names itself)."""

    def __init__(self, paths: Sequence[Path], image_processor) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.image_processor(images=load_rgb(self.paths[i]), return_tensors="pt")["pixel_values"][0]


@torch.no_grad()
def encode_image_files(vision_model: torch.nn.Module, image_processor, paths: Sequence[Path], *,
                       batch_size: int = 256, num_workers: int = 0, progress: bool = False,
                       shard: bool = False) -> torch.Tensor:
    """Projected embeddings ``(len(paths), D)`` (float32, CPU) of image files, streamed batch by batch.

    The same numbers as :func:`safeclip.models.clip.encode_images` on the decoded images, without ever
    holding more than one batch of them (``num_workers`` processes decode ahead of the encoder). ``shard``:
    as in :func:`embed_quadruplets` (each process embeds a block of whole batches; all get every row).
    """
    device = next(vision_model.parameters()).device
    dtype = next(vision_model.parameters()).dtype
    rank, world = (dist.get_rank(), world_size()) if shard and world_size() > 1 else (0, 1)
    files = ImageFiles(paths, image_processor)
    loader = DataLoader(Subset(files, shard_rows(len(files), batch_size, rank, world)), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = vision_model.training
    vision_model.eval()
    out = [encode_pixel_batch(vision_model, pixels.to(device, dtype, non_blocking=True)).float()
           for pixels in tqdm(loader, desc="embedding images", disable=not progress, leave=False)]
    vision_model.train(was_training)
    local = torch.cat(out) if out else torch.empty(0, vision_model.config.projection_dim, device=device)
    if world > 1:
        local = gather_rows(local, [len(shard_rows(len(files), batch_size, r, world)) for r in range(world)])
    return local.cpu()
