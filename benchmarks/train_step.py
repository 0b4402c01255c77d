"""Benchmark: one Safe-CLIP training step, straightforward (paper-faithful) vs the project's step.

    python benchmarks/train_step.py                       # ViT-B/32-sized random CLIP, batch 32, CPU
    python benchmarks/train_step.py --model tiny --steps 3
    python benchmarks/train_step.py --model vit-l-14 --device cuda --batch 128 --json out.json

Both steps compute the same objective (paper Eq. 4-7 with the same weights) from the same LoRA
weights on the same batch:

(a) baseline: six encoder passes per batch, T(t), T(t*), T0(t), V0(v), V(v), V(v*); text padded to
    the model maximum (77 for CLIP); float32; frozen references recomputed every step.
(b) safeclip: the training loop's step (``safeclip.train``): one pass per encoder over safe+unsafe
    concatenated, text padded to the longest caption in the batch, frozen references T0(t), V0(v)
    read from a cache computed once (exact: the adapters are off for them, so they never change),
    and bf16 autocast on CUDA.

Prints quadruplets/second for each, the speedup, peak memory, and the largest relative difference
between the two steps' losses over the measured steps; ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import resource
import time
from pathlib import Path

import torch

from safeclip.config import load_config
from safeclip.losses import safe_clip_objective
from safeclip.models.clip import ClipBundle, bundle_from_clip_model, encode_pixel_batch, encode_token_batch, tiny_image_processor
from safeclip.models.lora import adapters_disabled
from safeclip.models.tokenizer import train_clip_tokenizer
from safeclip.train import encode_batch_images, encode_batch_texts, loss_weights, prepare_encoders
from safeclip.world.categories import PHRASES
from safeclip.world.scenes import caption, sample_scene

SIZES = {  # (width, layers, heads, mlp, image size, patch, projection) for vision; text uses its own width
    "tiny": {"vision": (64, 2, 4, 256, 32, 4), "text": (64, 2, 4, 256), "proj": 64},
    "vit-b-32": {"vision": (768, 12, 12, 3072, 224, 32), "text": (512, 12, 8, 2048), "proj": 512},
    "vit-l-14": {"vision": (1024, 24, 16, 4096, 224, 14), "text": (768, 12, 12, 3072), "proj": 768},
}


def build_model(size: str, tokenizer) -> ClipBundle:
    from transformers import CLIPConfig, CLIPModel

    (vw, vl, vh, vm, image, patch), (tw, tl, th, tm) = SIZES[size]["vision"], SIZES[size]["text"]
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": tw, "num_hidden_layers": tl, "num_attention_heads": th,
                     "intermediate_size": tm, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1, "projection_dim": SIZES[size]["proj"]},
        vision_config={"hidden_size": vw, "num_hidden_layers": vl, "num_attention_heads": vh, "intermediate_size": vm,
                       "image_size": image, "patch_size": patch, "projection_dim": SIZES[size]["proj"]},
        projection_dim=SIZES[size]["proj"],
    )
    torch.manual_seed(0)
    return bundle_from_clip_model(CLIPModel(config), tokenizer, tiny_image_processor(image), name=f"random-{size}")


def make_batch(tokenizer, batch: int, image_size: int, seed: int = 0) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    safe, unsafe = [], []
    for _ in range(batch):
        scene = sample_scene(rng)
        safe.append(caption(scene))
        unsafe.append(caption(scene, rng.choice(rng.choice(list(PHRASES.values())))))
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
    return safe, unsafe, pixels, pixels + 0.5 * torch.randn(pixels.shape, generator=generator)


def tokens(tokenizer, texts: list[str], padding: str, device) -> dict:
    out = tokenizer(texts, padding=padding, max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in out.items()}


def baseline_step(text, vision, batch: dict, cfg) -> dict:
    """Six passes, references recomputed, float32 (the straightforward reading of the paper)."""
    with torch.no_grad(), adapters_disabled(text, vision):
        text_safe_ref = encode_token_batch(text, batch["safe77"]["input_ids"], batch["safe77"]["attention_mask"])
        image_safe_ref = encode_pixel_batch(vision, batch["safe_pixels"])
    return safe_clip_objective(
        text_safe=encode_token_batch(text, batch["safe77"]["input_ids"], batch["safe77"]["attention_mask"]),
        text_unsafe=encode_token_batch(text, batch["unsafe77"]["input_ids"], batch["unsafe77"]["attention_mask"]),
        image_safe=encode_pixel_batch(vision, batch["safe_pixels"]),
        image_unsafe=encode_pixel_batch(vision, batch["unsafe_pixels"]),
        text_safe_ref=text_safe_ref, image_safe_ref=image_safe_ref,
        weights=loss_weights(cfg), temperature=cfg.loss.temperature)


def safeclip_step(text, vision, batch: dict, cfg, refs: dict, autocast: bool) -> dict:
    """The training loop's step with cached references."""
    with torch.autocast(batch["safe_pixels"].device.type, dtype=torch.bfloat16, enabled=autocast):
        current = {**encode_batch_texts(text, batch["longest"]), **encode_batch_images(vision, batch, batch["safe_pixels"].dtype)}
        return safe_clip_objective(
            text_safe=current["text_safe"], text_unsafe=current["text_unsafe"], image_safe=current["image_safe"],
            image_unsafe=current["image_unsafe"], text_safe_ref=refs["text_safe_ref"], image_safe_ref=refs["image_safe_ref"],
            weights=loss_weights(cfg), temperature=cfg.loss.temperature)


def time_steps(step, text, vision, steps: int, device) -> tuple[float, list[float]]:
    params = [p for m in (text, vision) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    losses, times = [], []
    for i in range(steps + 1):  # the first step warms up and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        terms = step(text, vision)
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        losses.append(float(terms["total"].detach()))
        if i:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times), losses


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit-b-32", choices=sorted(SIZES), help="randomly initialised CLIP size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32, help="quadruplets per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--json", default="", help="write the numbers to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    rng = random.Random(1)
    texts = [caption(sample_scene(rng), rng.choice(list(PHRASES.values()))[0]) for _ in range(2000)]
    tokenizer = train_clip_tokenizer(texts, vocab_size=1000, model_max_length=77)
    bundle = build_model(args.model, tokenizer)
    cfg = load_config(None, ["data.train=unused", "lora.dropout=0.0"])  # dropout off: both steps see identical math
    text, vision = prepare_encoders(bundle, cfg)
    text, vision = text.to(device), vision.to(device)
    image_size = SIZES[args.model]["vision"][4]
    safe, unsafe, safe_pixels, unsafe_pixels = make_batch(tokenizer, args.batch, image_size)
    batch = {"safe77": tokens(tokenizer, safe, "max_length", device), "unsafe77": tokens(tokenizer, unsafe, "max_length", device),
             "safe_pixels": safe_pixels.to(device), "unsafe_pixels": unsafe_pixels.to(device)}
    longest = tokens(tokenizer, safe + unsafe, "longest", device)
    batch["longest"] = {"safe_input_ids": longest["input_ids"][: args.batch], "safe_attention_mask": longest["attention_mask"][: args.batch],
                        "unsafe_input_ids": longest["input_ids"][args.batch:], "unsafe_attention_mask": longest["attention_mask"][args.batch:]}
    with torch.no_grad(), adapters_disabled(text, vision):  # the reference cache, computed once
        refs = {"text_safe_ref": encode_token_batch(text, batch["safe77"]["input_ids"], batch["safe77"]["attention_mask"]),
                "image_safe_ref": encode_pixel_batch(vision, batch["safe_pixels"])}
    init = copy.deepcopy({"text": text.state_dict(), "vision": vision.state_dict()})

    baseline_s, baseline_losses = time_steps(lambda t, v: baseline_step(t, v, batch, cfg), text, vision, args.steps, device)
    baseline_peak = peak_memory_mb(device)
    text.load_state_dict(init["text"])
    vision.load_state_dict(init["vision"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    autocast = device.type == "cuda"
    project_s, project_losses = time_steps(lambda t, v: safeclip_step(t, v, batch, cfg, refs, autocast), text, vision,
                                           args.steps, device)
    project_peak = peak_memory_mb(device)
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(baseline_losses, project_losses))
    result = {
        "model": args.model, "device": str(device), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
        "baseline_qps": args.batch / baseline_s, "safeclip_qps": args.batch / project_s, "speedup": baseline_s / project_s,
        "max_rel_loss_diff": rel, "baseline_losses": baseline_losses, "safeclip_losses": project_losses,
        "peak_memory_mb": {"baseline": baseline_peak, "safeclip": project_peak,
                           "kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS (cumulative)"},
        "safeclip_step": "cached references, concatenated passes, longest padding" + (", bf16 autocast" if autocast else ""),
    }
    print(f"model {args.model} on {device}, batch {args.batch}, {args.steps} timed steps")
    print(f"baseline  {result['baseline_qps']:8.2f} quadruplets/s  (six passes, pad 77, fp32, references recomputed)")
    print(f"safeclip  {result['safeclip_qps']:8.2f} quadruplets/s  ({result['safeclip_step']})")
    print(f"speedup   {result['speedup']:.2f}x   max relative loss difference {rel:.2e}")
    print(f"peak memory (MB): baseline {baseline_peak:.0f}, safeclip {project_peak:.0f} ({result['peak_memory_mb']['kind']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
