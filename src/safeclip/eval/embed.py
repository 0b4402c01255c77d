"""Embed quadruplet records or image files with a CLIP bundle (any encoders: base, with adapters, merged).

    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records)
    emb["safe_text"]  # (N, D) float32 on CPU; keys only for the modalities the records carry
    image_emb = encode_image_files(bundle.vision, bundle.image_processor, paths, num_workers=8)  # (N, D)

Images are streamed: decoded and preprocessed batch by batch (in loader workers when asked), so memory
holds one batch of pixels plus the ``(N, D)`` embeddings, however many images there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from safeclip.data.loader import QuadrupletCollator, QuadrupletDataset, load_rgb
from safeclip.data.quadruplets import MODALITIES, Quadruplet
from safeclip.models.clip import encode_pixel_batch, encode_token_batch


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
) -> dict[str, torch.Tensor]:
    """Projected embeddings ``(N, D)`` (float32, CPU) of each modality of ``records``."""
    if modalities is None:
        modalities = tuple(m for m in MODALITIES if all(getattr(r, m) is not None for r in records))
    dataset = dataset or QuadrupletDataset(records, image_processor, modalities)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=QuadrupletCollator(tokenizer))
    device = next(text_model.parameters()).device
    vision_dtype = next(vision_model.parameters()).dtype
    was_training = (text_model.training, vision_model.training)
    text_model.eval()
    vision_model.eval()
    out: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    for batch in tqdm(loader, desc="embedding", disable=not progress, leave=False):
        for side in ("safe", "unsafe"):
            if f"{side}_text" in out:
                emb = encode_token_batch(text_model, batch[f"{side}_input_ids"].to(device),
                                         batch[f"{side}_attention_mask"].to(device))
                out[f"{side}_text"].append(emb.float().cpu())
            if f"{side}_image" in out:
                emb = encode_pixel_batch(vision_model, batch[f"{side}_pixels"].to(device, vision_dtype))
                out[f"{side}_image"].append(emb.float().cpu())
    text_model.train(was_training[0])
    vision_model.train(was_training[1])
    return {name: torch.cat(chunks) for name, chunks in out.items()}


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
                       batch_size: int = 256, num_workers: int = 0, progress: bool = False) -> torch.Tensor:
    """Projected embeddings ``(len(paths), D)`` (float32, CPU) of image files, streamed batch by batch.

    The same numbers as :func:`safeclip.models.clip.encode_images` on the decoded images, without ever
    holding more than one batch of them (``num_workers`` processes decode ahead of the encoder).
    """
    device = next(vision_model.parameters()).device
    dtype = next(vision_model.parameters()).dtype
    loader = DataLoader(ImageFiles(paths, image_processor), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = vision_model.training
    vision_model.eval()
    out = [encode_pixel_batch(vision_model, pixels.to(device, dtype, non_blocking=True)).float().cpu()
           for pixels in tqdm(loader, desc="embedding images", disable=not progress, leave=False)]
    vision_model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, vision_model.config.projection_dim)
