"""Train the miniature world's base CLIP from scratch (standard CLIP contrastive loss).

    safeclip world pretrain --world world --out base --seed 0

Like web-trained CLIP, the base model sees safe *and* unsafe pairs: every batch holds scenes with
both their (v, t) and (v*, t*) pairs, so it learns to link each category's words to its marker.
The result is a Hugging Face CLIP folder (safetensors, a CLIP BPE tokenizer trained on the world's
captions, a CLIPImageProcessor) that :func:`safeclip.models.load_clip` loads like
``openai/clip-vit-large-patch14``. A folder already built with the same settings is reused.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPModel

from safeclip.checkpoint import write_folder_atomic, write_json_atomic
from safeclip.data.quadruplets import read_rows
from safeclip.config import Settings, setting
from safeclip.losses import symmetric_info_nce
from safeclip.models.clip import tiny_clip_config, tiny_image_processor
from safeclip.models.tokenizer import train_clip_tokenizer
from safeclip.schedule import warmup_cosine_schedule
from safeclip.world.scenes import IMAGE_SIZE


@dataclass
class PretrainSettings(Settings):
    """Size and schedule of the base CLIP (defaults: a few minutes on 2 CPU cores)."""

    seed: int = setting(0, "Seed of the initial weights and of the batch order.")
    epochs: int = setting(4, "Passes over the world's training pairs.", ge=1)
    batch_size: int = setting(256, "Pairs per step: batch_size / 2 scenes, each with its safe and unsafe pair.", ge=2)
    lr: float = setting(2e-3, "AdamW peak learning rate (warm-up cosine schedule, safeclip.schedule).", gt=0.0)
    warmup_steps: int = setting(40, "Steps of linear warm-up multiplied into the cosine decay.", ge=1)
    hidden_size: int = setting(96, "Width of both encoders.", ge=1)
    num_layers: int = setting(3, "Transformer layers of each encoder.", ge=1)
    num_heads: int = setting(4, "Attention heads of each encoder.", ge=1)
    intermediate_size: int = setting(256, "Width of each MLP.", ge=1)
    projection_dim: int = setting(96, "Dimension of the shared embedding space.", ge=1)
    patch_size: int = setting(4, "Vision patch size in pixels.", ge=1)
    vocab_size: int = setting(800, "Size of the BPE vocabulary trained on the world's captions.", ge=1)
    max_text_length: int = setting(40, "Longest caption in tokens.", ge=2)
    text_padding: str = setting("longest", "Pad captions to the longest one of the set ('longest': exact with CLIP's causal mask and end-token pooling, ~25% faster steps, benchmarks/pretrain_padding.py) or to max_text_length ('max_length').", choices=("longest", "max_length"))
    batch_pairs: str = setting("scene", "'scene': every batch holds scenes with both their safe and unsafe pair (each pair is the other's hard negative); 'random': pairs drawn at random from all safe and unsafe pairs, as in web data.", choices=("scene", "random"))


# Settings added after base folders were first built, with the value that reproduces those builds: at that
# value they stay out of the cache key, so a base built before they existed is still reused.
LATER_SETTINGS = {"batch_pairs": "scene"}


def cache_settings(settings: PretrainSettings) -> dict:
    """The settings that identify a built base (``base.json`` "key")."""
    return {k: v for k, v in asdict(settings).items() if LATER_SETTINGS.get(k, object()) != v}


def untrained_base(captions: list[str], settings: PretrainSettings) -> tuple:
    """A CLIP tokenizer trained on ``captions`` and a randomly initialised ``CLIPModel`` of ``settings``' size."""
    tokenizer = train_clip_tokenizer(captions, vocab_size=settings.vocab_size, model_max_length=settings.max_text_length)
    config = tiny_clip_config(tokenizer, image_size=IMAGE_SIZE, patch_size=settings.patch_size,
                              hidden_size=settings.hidden_size, projection_dim=settings.projection_dim,
                              num_layers=settings.num_layers, num_heads=settings.num_heads,
                              intermediate_size=settings.intermediate_size)
    return tokenizer, CLIPModel(config)


def pixel_tensor(paths: list[Path], image_processor) -> torch.Tensor:
    """CLIP-normalised ``(N, 3, H, W)`` pixels; world images are already at the model's size."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    raw = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # (N, H, W, 3) uint8
    pixels = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - mean) / std


def epoch_batches(rng: np.random.Generator, n: int, settings: PretrainSettings):
    """One epoch's batches as indices into the ``2n`` pairs (safe ``i``, unsafe ``n + i``), in the
    ``settings.batch_pairs`` way: each scene's two pairs side by side, or pairs drawn at random."""
    scenes_per_batch = settings.batch_size // 2
    if settings.batch_pairs == "scene":
        order = torch.from_numpy(rng.permutation(n))
        for step in range(n // scenes_per_batch):
            scenes = order[step * scenes_per_batch:(step + 1) * scenes_per_batch]
            yield torch.cat([scenes, scenes + n])  # each scene's safe and unsafe pair
    else:
        order = torch.from_numpy(rng.permutation(2 * n))
        for step in range(n // scenes_per_batch):
            yield order[step * settings.batch_size:(step + 1) * settings.batch_size]


def pretrain_base(world_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0,
                  progress: bool = True, **overrides) -> Path:
    """Train (or reuse) the base CLIP of the world in ``world_dir``; returns ``out_dir``."""
    settings = PretrainSettings(seed=seed, **overrides)
    world, out = Path(world_dir), Path(out_dir)
    world_meta = json.loads((world / "world.json").read_text())
    key = {"settings": cache_settings(settings), "world": world_meta["settings"]}
    if (out / "base.json").is_file() and json.loads((out / "base.json").read_text()).get("key") == key:
        return out
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()

    rows = read_rows(world / "train.jsonl")
    captions = [r["safe_text"] for r in rows] + [r["unsafe_text"] for r in rows]
    tokenizer, model = untrained_base(captions, settings)
    image_processor = tiny_image_processor(IMAGE_SIZE)

    # Decode and tokenize once: (N, ...) tensors for safe and unsafe sides.
    texts = tokenizer(captions,
                      padding=settings.text_padding, truncation=True, max_length=settings.max_text_length,
                      return_tensors="pt")
    pixels = pixel_tensor([world / r["safe_image"] for r in rows] + [world / r["unsafe_image"] for r in rows], image_processor)
    n = len(rows)
    steps_per_epoch = n // (settings.batch_size // 2)
    total_steps = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.1)
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=settings.warmup_steps, total_steps=total_steps)
    log = []
    model.train()
    with tqdm(total=total_steps, desc="pretrain base CLIP", disable=not progress) as bar:
        for epoch in range(settings.epochs):
            for step, index in enumerate(epoch_batches(rng, n, settings)):
                outputs = model(input_ids=texts["input_ids"][index], attention_mask=texts["attention_mask"][index],
                            pixel_values=pixels[index])
                scale = model.logit_scale.exp().clamp(max=100)  # CLIP's learnt inverse temperature, capped at 100
                loss = symmetric_info_nce(outputs.text_embeds, outputs.image_embeds, logit_scale=scale) / 2
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                log.append({"epoch": epoch, "step": epoch * steps_per_epoch + step + 1, "loss": loss.item()})
    model.eval()

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        write_json_atomic(tmp / "base.json", {"key": key, "seconds": time.perf_counter() - started,
                                              "torch": torch.__version__, "final_loss": log[-1]["loss"]})

    return write_folder_atomic(out, fill)
