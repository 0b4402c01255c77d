"""Benchmark: one Safe-CLIP training step, straightforward (paper-faithful) vs the project's step.

    python benchmarks/train_step.py                       # ViT-B/32-sized random CLIP, batch 32, CPU (~5 min)
    python benchmarks/train_step.py --model tiny --steps 3 --json /tmp/tiny.json
    python benchmarks/train_step.py --ablate              # also time each optimisation on its own
    python benchmarks/train_step.py --model vit-l-14 --device cuda --batch 128 --compile --json out.json
    python benchmarks/train_step.py --model path/to/hf_clip_folder --device cuda

Both steps compute the same objective (paper Eq. 4-7, the same weights and temperature) from the
same LoRA initialisation on the same batch of quadruplets, read from disk through the project's
data path (``read_quadruplets`` -> ``QuadrupletDataset`` -> ``QuadrupletCollator``):

(a) baseline: six encoder passes per batch, T(t), T(t*), T0(t), V0(v), V(v), V(v*); text padded to
    the model maximum (77 for CLIP); eager attention; float32; frozen references recomputed every
    step. This is how the authors' script computes a step.
(b) safeclip: ``safeclip.train.safe_clip_step_losses`` as the training loop calls it: one pass per
    encoder over safe+unsafe concatenated, text padded to the longest caption of the batch, PyTorch
    SDPA attention, frozen references T0(t), V0(v) read from the on-disk reference cache
    (``safeclip.refcache``, built once per model and dataset, exact because the adapters are off for
    them), and on CUDA bf16 autocast (optionally ``torch.compile`` and gradient checkpointing).

LoRA dropout is 0 here so that both steps do identical arithmetic and their losses can be compared
step by step (with dropout the masks would differ; the references are unaffected either way, since
the adapters and their dropout are switched off for T0 / V0). Prints quadruplets/second for each,
the speedup, peak memory, analytic FLOPs (and model-FLOP utilisation on CUDA) and the largest
relative difference between the two steps' losses over all steps; ``--json FILE`` writes them.
The variants take their steps in turn (round-robin) and the speedup uses each one's fastest timed
step, so that load from other processes on a shared machine distorts the ratio as little as possible.

On Linux CPUs both variants run with glibc malloc told to keep freed memory
(``--malloc-tuning``, the default): otherwise every activation above 32 MB is a fresh ``mmap``
whose pages fault in on first touch, which makes element-wise ops several times slower. Training
gets the same effect from ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` (or jemalloc).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safeclip.config import load_config
from safeclip.data import QuadrupletCollator, QuadrupletDataset, read_quadruplets
from safeclip.losses import safe_clip_objective
from safeclip.models.clip import (
    ClipBundle,
    bundle_from_clip_model,
    encode_pixel_batch,
    encode_token_batch,
    load_clip,
    tiny_image_processor,
)
from safeclip.models.lora import adapters_disabled
from safeclip.models.tokenizer import train_clip_tokenizer
from safeclip.refcache import load_or_compute_references
from safeclip.train import prepare_encoders, safe_clip_step_losses
from safeclip.world.categories import MARKERS, PHRASES
from safeclip.world.scenes import caption, render, sample_scene

# Randomly initialised CLIPs: vision (width, layers, heads, mlp, image size, patch), text (width, layers, heads, mlp).
SIZES = {
    "tiny": {"vision": (64, 2, 4, 256, 32, 4), "text": (64, 2, 4, 256), "proj": 64},
    "vit-b-32": {"vision": (768, 12, 12, 3072, 224, 32), "text": (512, 12, 8, 2048), "proj": 512},
    "vit-l-14": {"vision": (1024, 24, 16, 4096, 224, 14), "text": (768, 12, 12, 3072), "proj": 768},
    "vit-h-14": {"vision": (1280, 32, 16, 5120, 224, 14), "text": (1024, 24, 16, 4096), "proj": 1024},
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


# ----------------------------------------------------------------------------- model and data


def random_clip(size: str) -> ClipBundle:
    """A CLIP of the given size with random weights and a BPE tokenizer learnt on world captions."""
    from transformers import CLIPConfig, CLIPModel

    rng = random.Random(1)
    texts = [caption(sample_scene(rng), rng.choice(list(PHRASES.values()))[0]) for _ in range(2000)]
    tokenizer = train_clip_tokenizer(texts, vocab_size=1000, model_max_length=77)
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


def write_quadruplets(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` miniature-world quadruplets (captions + PNG images) in the table format."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = sample_scene(rng)
        category = rng.choice(list(PHRASES))
        layout = rng.randrange(2**31)
        render(scene, random.Random(layout)).save(folder / "images" / f"{i}.png")
        render(scene, random.Random(layout), marker=MARKERS[category]).save(folder / "images" / f"{i}-unsafe.png")
        rows.append({"id": str(i), "safe_text": caption(scene), "unsafe_text": caption(scene, rng.choice(PHRASES[category])),
                     "safe_image": f"images/{i}.png", "unsafe_image": f"images/{i}-unsafe.png", "category": category})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def base_models(*models):
    return [m.get_base_model() if hasattr(m, "get_base_model") else m for m in models]


def set_attention(implementation: str, *models) -> None:
    for model in base_models(*models):
        model.set_attn_implementation(implementation)


def set_checkpointing(enabled: bool, *models) -> None:
    for model in base_models(*models):
        if enabled:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()


# ----------------------------------------------------------------------------- the steps


def straightforward_step(text, vision, batch: dict, cfg, refs: dict | None = None) -> dict:
    """Four passes with gradient, T(t), T(t*), V(v), V(v*), plus T0(t), V0(v) unless ``refs`` are given."""
    if refs is None:
        with torch.no_grad(), adapters_disabled(text, vision):
            refs = {"safe_text_ref": encode_token_batch(text, batch["safe_input_ids"], batch["safe_attention_mask"]),
                    "safe_image_ref": encode_pixel_batch(vision, batch["safe_pixels"])}
    return safe_clip_objective(
        safe_text=encode_token_batch(text, batch["safe_input_ids"], batch["safe_attention_mask"]),
        unsafe_text=encode_token_batch(text, batch["unsafe_input_ids"], batch["unsafe_attention_mask"]),
        safe_image=encode_pixel_batch(vision, batch["safe_pixels"]),
        unsafe_image=encode_pixel_batch(vision, batch["unsafe_pixels"]),
        safe_text_ref=refs["safe_text_ref"], safe_image_ref=refs["safe_image_ref"],
        weights=cfg.loss.weights(), temperature=cfg.loss.temperature,
        info_nce_scale=cfg.loss.info_nce_scale, cosine_form=cfg.loss.cosine_form)


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
        yield


# ----------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or on Linux the resident set's high-water
    mark (reset at the start through ``/proc/self/clear_refs``) above the resident set at the start."""

    def __init__(self, device: torch.device, measure: bool = True) -> None:
        self.device, self.measure, self.peak_mb, self._start = device, measure, float("nan"), None

    @staticmethod
    def status_mb(field: str) -> float:
        with open("/proc/self/status") as fh:
            line = next(line for line in fh if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    def __enter__(self) -> PeakMemory:
        if not self.measure:
            return self
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return self
        release_free_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self._start = self.status_mb("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if not self.measure:
            return
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self._start is not None:
            self.peak_mb = self.status_mb("VmHWM") - self._start


def glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> bool:
    """Keep freed memory in the heap (no per-allocation mmap / page faults); glibc only."""
    libc = glibc()
    if libc is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release_free_memory() -> None:
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass
class Variant:
    """One way of computing the step, with its own copy of the LoRA weights and its own Adam state."""

    name: str
    step: Callable[[], dict]
    attention: str  # "eager" or "sdpa"
    text_tokens: int  # padded caption length it encodes
    passes: tuple[int, int, int, int]  # encoder passes over `batch` items: trained text, trained image, frozen text, frozen image
    checkpointing: bool = False
    seconds: list = field(default_factory=list)
    cpu_seconds: list = field(default_factory=list)  # process CPU time (all threads), blind to time spent descheduled
    losses: list = field(default_factory=list)
    first_terms: dict | None = None
    peak_mb: float = float("nan")


def run_interleaved(variants: list[Variant], params: list[torch.nn.Parameter], text, vision, warmup: int, steps: int,
                    device: torch.device) -> None:
    """Round-robin: every variant takes one optimizer step per round, so that all of them see the same
    machine load (the timings of a shared machine drift); the first ``warmup`` rounds are not timed.
    Every variant starts from the same LoRA weights and keeps its own weights and Adam state.
    Peak memory is measured in round 0 (freed memory is handed back to the OS before each variant)."""
    start_values = [p.detach().clone() for p in params]
    state = {v.name: ([t.clone() for t in start_values], torch.optim.Adam(params, lr=1e-4)) for v in variants}
    for round_ in range(warmup + steps):
        for v in variants:
            values, optimizer = state[v.name]
            set_attention(v.attention, text, vision)
            set_checkpointing(v.checkpointing, text, vision)
            with torch.no_grad():
                for p, value in zip(params, values):
                    p.copy_(value)
            with PeakMemory(device, measure=round_ == 0) as memory:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                terms = v.step()
                terms["total"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if round_ == 0:
                v.peak_mb, v.first_terms = memory.peak_mb, {k: float(t.detach()) for k, t in terms.items()}
            v.losses.append(float(terms["total"].detach()))
            if round_ >= warmup:
                v.seconds.append(elapsed)
                v.cpu_seconds.append(cpu)
            del terms
            with torch.no_grad():
                for p, value in zip(params, values):
                    value.copy_(p)
            print(f"  round {round_} {v.name:24s} {elapsed:8.3f} s (CPU {cpu:8.3f} s)  loss {v.losses[-1]:.6f}", flush=True)


def encoder_flops(model, tokens: int, items: int) -> float:
    """Forward FLOPs of one encoder pass: ``items`` sequences of ``tokens`` tokens (LoRA included).

    2 x (weights of every linear / conv applied per token) + the attention products (4 x seq x width
    per token per layer) + the projection of the pooled token.
    """
    base = base_models(model)[0]
    config = base.config
    per_token = 0
    for name, module in base.named_modules():
        if ".layers." in name and isinstance(module, torch.nn.Linear):
            per_token += 2 * module.in_features * module.out_features
        if "patch_embedding" in name and isinstance(module, torch.nn.Conv2d):  # per patch token (LoRA A/B too)
            per_token += 2 * module.weight.numel() * (tokens - 1) / tokens
    attention = 4 * tokens * config.hidden_size * config.num_hidden_layers
    projection = 2 * config.hidden_size * config.projection_dim
    return items * (tokens * (per_token + attention) + projection)


def step_flops(text, vision, text_tokens: int, image_tokens: int, batch: int, trained_text: int, trained_image: int,
               frozen_text: int, frozen_image: int) -> float:
    """Model FLOPs of a step: passes with gradient count 3x forward (backward = 2x), frozen ones 1x."""
    t = encoder_flops(text, text_tokens, batch)
    v = encoder_flops(vision, image_tokens, batch)
    return 3 * (trained_text * t + trained_image * v) + frozen_text * t + frozen_image * v


def peak_tflops(device: torch.device, given: float) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit-b-32", help=f"random CLIP size ({', '.join(SIZES)}) or a local HF CLIP folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32, help="quadruplets per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed rounds first (default: 1 on CPU, 3 on CUDA or with --compile)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (paper: 16)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders of the safeclip step")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="gradient checkpointing in the safeclip step")
    parser.add_argument("--no-autocast", action="store_true", help="safeclip step in float32 on CUDA too")
    parser.add_argument("--malloc-tuning", action=argparse.BooleanOptionalAction, default=True,
                        help="glibc: keep freed memory instead of mmap per large tensor (both variants)")
    parser.add_argument("--ablate", action="store_true", help="also time the optimisations one at a time")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="accelerator bf16 dense peak (default: known GPUs)")
    parser.add_argument("--json", default="", help="write the numbers to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    malloc_tuned = device.type == "cpu" and args.malloc_tuning and tune_malloc()
    warmup = args.warmup if args.warmup >= 0 else (3 if device.type == "cuda" or args.compile else 1)
    use_autocast = device.type == "cuda" and not args.no_autocast

    # Model: LoRA on both encoders exactly as the training loop adds it.
    bundle = random_clip(args.model) if args.model in SIZES else load_clip(args.model)
    cfg = load_config(None, ["data.train=unused", "lora.dropout=0.0", f"lora.r={args.lora_r}"])
    text, vision = prepare_encoders(bundle, cfg)
    text, vision = text.to(device).train(), vision.to(device).train()
    params = [p for m in (text, vision) for p in m.parameters() if p.requires_grad]

    # Data through the project's data path; the same quadruplets, two paddings.
    work = Path(tempfile.mkdtemp(prefix="safeclip-bench-"))
    records, report = read_quadruplets(write_quadruplets(work / "data", args.batch))
    dataset = QuadrupletDataset(records, bundle.image_processor, report.modalities, cache_images=True)
    start = time.perf_counter()
    items = [dataset[i] for i in range(len(dataset))]
    decode_ms = (time.perf_counter() - start) / len(items) * 1000
    start = time.perf_counter()
    items = [dataset[i] for i in range(len(dataset))]
    cached_ms = (time.perf_counter() - start) / len(items) * 1000
    batch77 = to_device(QuadrupletCollator(bundle.tokenizer, padding="max_length")(items), device)
    batch = to_device(QuadrupletCollator(bundle.tokenizer, padding="longest")(items), device)

    # The frozen-reference cache, built once per model and dataset (its cost is not part of a step).
    start = time.perf_counter()
    with torch.no_grad():
        refs = load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records,
                                          report.modalities, work / "refcache", batch_size=args.batch)
    refs = {k: v.to(device) for k, v in refs.items()}
    cache_s = time.perf_counter() - start
    fast_text, fast_vision = (torch.compile(text), torch.compile(vision)) if args.compile else (text, vision)

    def project_step() -> dict:
        with autocast(device, use_autocast):
            return safe_clip_step_losses(fast_text, fast_vision, text, vision, batch, cfg, torch.float32, refs)

    long_len, max_len = batch["safe_input_ids"].shape[1], batch77["safe_input_ids"].shape[1]
    image_tokens = (base_models(vision)[0].config.image_size // base_models(vision)[0].config.patch_size) ** 2 + 1
    variants = [Variant("baseline", lambda: straightforward_step(text, vision, batch77, cfg), "eager", max_len, (2, 2, 1, 1))]
    if args.ablate:  # the optimisations added one at a time, in the order the issue lists them
        variants += [
            Variant("+ pad to longest", lambda: straightforward_step(text, vision, batch, cfg), "eager", long_len, (2, 2, 1, 1)),
            Variant("+ one pass per encoder", lambda: safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32),
                    "eager", long_len, (2, 2, 1, 1)),
            Variant("+ cached references", lambda: safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32, refs),
                    "eager", long_len, (2, 2, 0, 0)),
        ]
    variants.append(Variant("safeclip", project_step, "sdpa", long_len, (2, 2, 0, 0), checkpointing=args.gradient_checkpointing))
    run_interleaved(variants, params, text, vision, warmup, args.steps, device)

    peak = peak_tflops(device, args.peak_tflops)
    results = {}
    for v in variants:
        step_s = min(v.seconds)  # the fastest timed step: the least disturbed by other load on the machine
        flops = step_flops(text, vision, v.text_tokens, image_tokens, args.batch, *v.passes)
        results[v.name] = {"qps": args.batch / step_s, "step_s": step_s, "median_step_s": statistics.median(v.seconds),
                           "seconds": v.seconds, "cpu_seconds": v.cpu_seconds, "losses": v.losses,
                           "first_terms": v.first_terms, "peak_mb": v.peak_mb, "flops": flops,
                           "tflops_per_s": flops / step_s / 1e12, "mfu": flops / step_s / 1e12 / peak if peak else None}
    base, fast = results["baseline"], results["safeclip"]
    for r in results.values():  # against the baseline: every term at the first step (same weights), the total at every step
        r["first_step_rel_term_diff"] = {k: rel_diff(base["first_terms"][k], r["first_terms"][k]) for k in base["first_terms"]}
        r["max_rel_loss_diff"] = max([rel_diff(a, b) for a, b in zip(base["losses"], r["losses"])]
                                     + list(r["first_step_rel_term_diff"].values()))
    result = {
        "baseline_qps": base["qps"], "safeclip_qps": fast["qps"], "speedup": base["step_s"] / fast["step_s"],
        "speedup_median": base["median_step_s"] / fast["median_step_s"],
        "speedup_cpu_time": min(base["cpu_seconds"]) / min(fast["cpu_seconds"]),
        "max_rel_loss_diff": fast["max_rel_loss_diff"], "first_step_rel_term_diff": fast["first_step_rel_term_diff"],
        "baseline_losses": base["losses"], "safeclip_losses": fast["losses"],
        "peak_memory_mb": {"baseline": base["peak_mb"], "safeclip": fast["peak_mb"],
                           "kind": "cuda max allocated" if device.type == "cuda"
                           else "peak resident set above its size at the start of the variant"},
        "flops_per_step": {"baseline": base["flops"], "safeclip": fast["flops"]},
        "tflops_per_s": {"baseline": base["tflops_per_s"], "safeclip": fast["tflops_per_s"]},
        "mfu": {"baseline": base["mfu"], "safeclip": fast["mfu"], "peak_tflops": peak,
                "note": "model FLOPs (backward = 2x forward) / time / bf16 dense peak"} if peak else None,
        "reference_cache_build_s": cache_s, "image_decode_ms_per_quadruplet": decode_ms,
        "image_cached_ms_per_quadruplet": cached_ms,
        "text_tokens": {"baseline": max_len, "safeclip": long_len},
        "variants": {name: {**r, "speedup": base["step_s"] / r["step_s"]} for name, r in results.items()},
        "settings": {"model": args.model, "device": str(device), "batch": args.batch, "steps": args.steps, "warmup": warmup,
                     "lora_r": args.lora_r, "autocast_bf16": use_autocast, "compile": args.compile,
                     "gradient_checkpointing": args.gradient_checkpointing, "malloc_tuning": malloc_tuned,
                     "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                     "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    print(f"model {args.model} on {device}, batch {args.batch}, {warmup} warm-up + {args.steps} timed steps per variant "
          "(interleaved; fastest timed step)")
    for name, r in results.items():
        print(f"  {name:24s} {r['qps']:8.2f} quadruplets/s  {base['step_s'] / r['step_s']:5.2f}x  "
              f"{r['tflops_per_s']:7.3f} TFLOP/s  peak {r['peak_mb']:6.0f} MB  loss diff {r['max_rel_loss_diff']:.1e}")
    print(f"baseline  {result['baseline_qps']:8.2f} quadruplets/s  "
          f"(six passes, pad {max_len}, eager attention, fp32, references recomputed)")
    print(f"safeclip  {result['safeclip_qps']:8.2f} quadruplets/s  (two passes, pad {long_len}, SDPA, cached references"
          + (", bf16 autocast" if use_autocast else "") + (", compiled" if args.compile else "") + ")")
    print(f"speedup   {result['speedup']:.2f}x (from median step times {result['speedup_median']:.2f}x, "
          f"from process CPU time {result['speedup_cpu_time']:.2f}x)")
    print(f"max relative loss difference {result['max_rel_loss_diff']:.2e} "
          f"(every term at step 1, the total over all {len(base['losses'])} steps)")
    print(f"peak memory (MB): baseline {base['peak_mb']:.0f}, safeclip {fast['peak_mb']:.0f} ({result['peak_memory_mb']['kind']})")
    print(f"model FLOPs per step: baseline {base['flops'] / 1e12:.2f} T, safeclip {fast['flops'] / 1e12:.2f} T"
          + (f"; MFU baseline {base['mfu']:.1%}, safeclip {fast['mfu']:.1%} of {peak:.0f} TFLOP/s" if peak else ""))
    print(f"one-off: reference cache {cache_s:.1f} s for {args.batch} quadruplets; image decode+preprocess "
          f"{decode_ms:.1f} ms/quadruplet, from the in-memory cache {cached_ms:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
