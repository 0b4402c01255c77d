"""Concept revival: fine-tune a safe model on safe data only and measure how much unsafe retrieval comes back.

    from safeclip.attacks.revival import RevivalSettings, revival_metrics
    metrics = revival_metrics(safe, train_records, test_records, RevivalSettings(steps=200))
    # {"T* NSFW@1 before": 33.3, "T* NSFW@1 after": 58.3, "V* NSFW@1 before": ..., "T->V R@1 after": ...}

What a downstream user does with a released safe CLIP: merge it into plain weights and fine-tune every weight with
CLIP's own loss (symmetric InfoNCE, Radford et al. 2021) on benign pairs. Nothing unsafe is seen; if NSFW@1 rises
again, the safety was a thin edit the benign gradient washes out (the revival "Roots Beneath the Cut", CVPR 2026,
reports for pruning-based unlearning in diffusion models). The fine-tuning sees only the safe text and safe image
of each training quadruplet; NSFW@1 before and after comes from the evaluation path's Safe-CLIP protocol.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from safeclip.config import _f
from safeclip.data.loader import EpochShuffleSampler, QuadrupletCollator, QuadrupletDataset
from safeclip.eval.evaluation import evaluate
from safeclip.losses import symmetric_info_nce
from safeclip.models.clip import ClipBundle, encode_pixel_batch, encode_token_batch
from safeclip.models.lora import merge_adapters


@dataclass
class RevivalSettings:
    """How long and how hard the benign fine-tuning runs."""

    steps: int = _f(200, "Optimizer steps of benign fine-tuning.")
    batch_size: int = _f(32, "Safe (text, image) pairs per step.")
    lr: float = _f(1e-4, "AdamW learning rate on every weight.")
    temperature: float = _f(0.07, "InfoNCE temperature (CLIP's initial 1/logit scale).")
    seed: int = _f(0, "Order of the pairs.")


def fine_tune_on_safe(bundle: ClipBundle, records, settings: RevivalSettings) -> ClipBundle:
    """A copy of ``bundle`` (adapters merged) with every weight fine-tuned on the safe pairs of ``records``."""
    out = merge_adapters(bundle)
    out.text, out.vision = copy.deepcopy(out.text), copy.deepcopy(out.vision)
    dataset = QuadrupletDataset(records, out.image_processor, ("safe_text", "safe_image"), cache_images=True)
    sampler = EpochShuffleSampler(len(dataset), seed=settings.seed)
    loader = DataLoader(dataset, batch_size=settings.batch_size, collate_fn=QuadrupletCollator(out.tokenizer),
                        sampler=sampler, drop_last=len(dataset) > settings.batch_size)
    params = [p for m in (out.text, out.vision) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    out.text.train()
    out.vision.train()
    step, epoch = 0, 0
    while step < settings.steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            text = encode_token_batch(out.text, batch["safe_input_ids"], batch["safe_attention_mask"])
            image = encode_pixel_batch(out.vision, batch["safe_pixels"])
            loss = symmetric_info_nce(text, image, settings.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= settings.steps:
                break
        epoch += 1
    out.text.eval()
    out.vision.eval()
    for p in params:
        p.requires_grad_(False)
    return out


def revival_metrics(bundle: ClipBundle, train_records, test_records, settings: RevivalSettings) -> dict[str, float]:
    """NSFW@1 of both unsafe directions and safe R@1 before and after :func:`fine_tune_on_safe`."""
    began = time.perf_counter()
    before = evaluate({"m": bundle}, test_records).models["m"]
    after = evaluate({"m": fine_tune_on_safe(bundle, train_records, settings)}, test_records).models["m"]
    metrics = {}
    for name, (group, key) in {"T* NSFW@1": ("T*->V+V*", "NSFW@1"), "V* NSFW@1": ("V*->T+T*", "NSFW@1"),
                               "T->V R@1": ("T->V", "R@1")}.items():
        metrics[f"{name} before"] = before[group][key]
        metrics[f"{name} after"] = after[group][key]
    metrics["seconds"] = round(time.perf_counter() - began, 1)
    return metrics
