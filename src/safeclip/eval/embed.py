"""Embed quadruplet records with a CLIP bundle (any encoders: base, with adapters, merged).

    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records)
    emb["safe_text"]  # (N, D) float32 on CPU; keys only for the modalities the records carry
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from safeclip.data.loader import QuadrupletCollator, QuadrupletDataset
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
