"""``safer-clip``: SafeR-CLIP (AAAI 2026; no public code) behind the methods interface, a compact loop.

    from safeclip.methods import MethodInputs, get_method
    bundle = get_method("safer-clip")(MethodInputs(base="demo/base", train="w/train.jsonl", out_dir="m/safer-clip",
                                                   overrides=["relative_scale=10", "curriculum=true"]))

What it does (as described for SafeR-CLIP, AAAI 2026, which has no public code), with T, V the LoRA-tuned encoders and T0, V0
the frozen base encoders:

1. Proximity-based targets, computed once over the training set and cached in ``out_dir/targets.safetensors``
   (with the frozen embeddings they come from): t^_i = argmax_j cos(T0(t*_i), T0(t_j)) over the safe
   captions, and v^_i = argmax_j cos(V0(v*_i), V0(v_j)) over the safe images (``image_target=nearest``;
   ``image_target=paired`` takes the image paired with t^_i instead). They replace the fixed ViSU partner.
2. Relative cross-modal redirection, the sample's own unsafe item the only negative:
   image side mean softplus(s * (cos(V(v*_i), T(t*_i)) - cos(V(v*_i), T0(t^_i)))), text side
   mean softplus(s * (cos(T(t*_i), V(v*_i)) - cos(T(t*_i), V0(v^_i)))). With ``negative=trained`` (default)
   the negative is the *trained* counterpart T(t*) / V(v*); ``negative=frozen`` uses T0(t*) / V0(v*), as
   the second-hand description writes it (why the default differs: docs/compare.md, "SafeR-CLIP's negative").
3. Unimodal redirection: -cos(T(t*_i), T0(t^_i)) - cos(V(v*_i), V0(v^_i)).
4. Safe-CLIP-style preservation on the safe pair: Eq. 6 (cosine to T0(t), V0(v)) and Eq. 7 (InfoNCE
   between T(t) and V0(v), and between T0(t) and V(v)), from :mod:`safeclip.losses`.
5. Three-stage curriculum by pair similarity sim_i = cos(T0(t_i), T0(t*_i)) (``curriculum_by``): the
   pairs are split into tertiles; the most similar third (the smallest shift to undo) is "easy". Epoch
   stage = floor(3 e / E), with the last epoch always on every pair: E=3 gives easy / easy+medium / all.

Choices the paper leaves open (each a field of :class:`SaferClipConfig`): the softplus scale s (10:
cosine differences live in [-2, 2], and softplus of raw differences is nearly linear), the image target
rule, which copy of the own unsafe item is the negative, the similarity used for the curriculum and which
end is easy, the loss weights, and whether a sample may be its own target (``exclude_own_pair``). The paper's ViT-L/14 recipe is LoRA r=16, Adam
lr 1e-4, batch 48, 9 epochs; the defaults here are sized for the offline world's small base (lr 1e-3,
the budget's epochs and batch), like ``recipes/demo.yaml`` for Safe-CLIP.

Writes ``out_dir/adapters/`` (LoRA, safetensors), ``train_log.jsonl``, ``config.json`` and, last,
``summary.json`` (its presence means done: a rerun loads the adapters instead of training).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from safeclip.checkpoint import write_json_atomic
from safeclip.config import Settings, load_settings, setting
from safeclip.data import read_quadruplets
from safeclip.data.loader import QuadrupletCollator, QuadrupletDataset
from safeclip.data.quadruplets import MODALITIES
from safeclip.errors import ConfigError, DataError
from safeclip.eval.embed import embed_quadruplets
from safeclip.losses import preservation_contrastive_loss, preservation_cosine_loss
from safeclip.methods.base import MethodInputs
from safeclip.models.clip import ClipBundle, encode_pixel_batch, encode_token_batch, load_clip
from safeclip.models.lora import add_lora, apply_adapters, lora_config, save_adapters


@dataclass
class SaferClipConfig(Settings):
    """SafeR-CLIP settings (``key=value`` overrides in ``MethodInputs.overrides``)."""

    lr: float = setting(1e-3, "Adam learning rate (paper, ViT-L/14: 1e-4).", gt=0.0)
    lora_r: int = setting(16, "LoRA rank on both encoders (paper: 16).", gt=0)
    lora_alpha: float = setting(16.0, "LoRA alpha.", gt=0.0)
    target_modules: str = setting("k_proj,v_proj,out_proj,fc1,fc2,patch_embedding", "Comma-separated LoRA targets.")
    relative_scale: float = setting(10.0, "s in softplus(s * (cos to own unsafe - cos to proximity target)).", gt=0.0)
    relative_weight: float = setting(1.0, "Weight of the relative cross-modal redirection (both sides).", ge=0.0)
    negative: str = setting("trained", "The own unsafe counterpart as the negative: 'trained' T(t*)/V(v*) or 'frozen' T0(t*)/V0(v*).", choices=("trained", "frozen"))
    unimodal_weight: float = setting(0.6, "Weight of the unimodal redirection (both sides).", ge=0.0)
    preservation_cosine: float = setting(0.5, "Weight of Eq. 6 on the safe pair (as recipes/demo.yaml).", ge=0.0)
    preservation_contrastive: float = setting(3.0, "Weight of Eq. 7 on the safe pair (as recipes/demo.yaml).", ge=0.0)
    temperature: float = setting(0.05, "InfoNCE temperature of Eq. 7 (the world's base has logit scale ~17).", gt=0.0)
    image_target: str = setting("nearest", "v^: the 'nearest' safe image by V0, or 'paired' = the image of t^'s pair.", choices=("nearest", "paired"))
    exclude_own_pair: bool = setting(False, "Forbid t^_i = t_i / v^_i = v_i (the nearest neighbour is often the own pair).")
    curriculum: bool = setting(True, "Three-stage curriculum; false: every pair every epoch.")
    curriculum_by: str = setting("text", "Pair similarity for the buckets: 'text' (T0), 'image' (V0) or 'both' (mean).", choices=("text", "image", "both"))
    easy: str = setting("similar", "Which end is easy: 'similar' pairs (small shift) or 'dissimilar' ones.", choices=("similar", "dissimilar"))
    log_every: int = setting(5, "Write train_log.jsonl every N steps.", ge=1)
    num_workers: int = setting(0, "DataLoader worker processes (real data: 8).", ge=0)
    image_cache_gb: float = setting(4.0, "Keep preprocessed training images in memory when they fit in this many GiB.", ge=0.0)
    device: str = setting("", "'cpu', 'cuda', ...; empty: cuda when available.")


# ----------------------------------------------------------------------------- proximity targets


PROXIMITY_CHUNK_ELEMENTS = 2**25  # similarities held at once by proximity_targets: 128 MiB in float32


def proximity_targets(unsafe_ref: torch.Tensor, safe_ref: torch.Tensor, *, exclude_own_pair: bool = False,
                      chunk_elements: int = PROXIMITY_CHUNK_ELEMENTS) -> torch.Tensor:
    """t^ / v^ indices ``(N,)``: for each unsafe ``(N, D)`` row the most cosine-similar safe ``(M, D)`` row.

    The ``(N, M)`` cosine matrix is never built whole (150k ViSU rows would be ~90 GB in float32): blocks of
    ``chunk_elements // M`` unsafe rows are scored against every safe row and reduced to their argmax, so
    memory is ``O(chunk_elements + N)`` and each row's choice is the full-matrix one (the same row of
    scores, the same argmax). With ``exclude_own_pair`` (needs M == N, row i of both from quadruplet i) the
    own pair i is not eligible. Ties go to the lowest index.
    """
    n, m = len(unsafe_ref), len(safe_ref)
    if exclude_own_pair and (n != m or n < 2):
        raise ConfigError("exclude_own_pair needs aligned unsafe and safe rows (N == M >= 2)")
    safe_unit = F.normalize(safe_ref.float(), dim=-1)  # (M, D)
    rows = max(1, chunk_elements // max(m, 1))
    chosen = torch.empty(n, dtype=torch.long)
    for start in range(0, n, rows):
        block = F.normalize(unsafe_ref[start:start + rows].float(), dim=-1) @ safe_unit.T  # (rows, M)
        if exclude_own_pair:
            own = torch.arange(start, start + len(block))
            block[torch.arange(len(block)), own] = -float("inf")
        chosen[start:start + len(block)] = block.argmax(dim=1).cpu()
    return chosen


def curriculum_buckets(similarity: torch.Tensor, *, easy: str = "similar") -> torch.Tensor:
    """Stage ``(N,)`` in {0 easy, 1 medium, 2 hard} by tertile of the pair similarity ``(N,)``."""
    order = torch.argsort(similarity, descending=(easy == "similar"), stable=True)
    stage = torch.empty_like(order)
    stage[order] = torch.arange(len(order)) * 3 // max(len(order), 1)
    return stage


def epoch_stage(epoch: int, epochs: int) -> int:
    """Curriculum stage of ``epoch`` (0-based) out of ``epochs``: floor(3e/E), the last epoch always 2."""
    return 2 if epoch >= epochs - 1 else min(2, 3 * epoch // epochs)


# ----------------------------------------------------------------------------- losses


def relative_redirection(query: torch.Tensor, own_unsafe_ref: torch.Tensor, target_ref: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """mean softplus(scale * (cos(q_i, own_unsafe_i) - cos(q_i, target_i))) over aligned ``(B, D)`` rows."""
    neg = F.cosine_similarity(query.float(), own_unsafe_ref.float(), dim=-1)
    pos = F.cosine_similarity(query.float(), target_ref.float(), dim=-1)
    return F.softplus(scale * (neg - pos)).mean()


def safer_clip_terms(*, safe_text, unsafe_text, safe_image, unsafe_image, ref: dict[str, torch.Tensor],
                     cfg: SaferClipConfig) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted ``"total"`` for one batch.

    Trainable embeddings ``(B, D)``: T(t), T(t*), V(v), V(v*). ``ref`` holds the frozen ``(B, D)`` rows:
    ``safe_text`` T0(t), ``safe_image`` V0(v), ``unsafe_text`` T0(t*), ``unsafe_image`` V0(v*),
    ``text_target`` T0(t^), ``image_target`` V0(v^). The relative term's negative is T(t*)/V(v*)
    (``cfg.negative == "trained"``) or the frozen T0(t*)/V0(v*) (``"frozen"``).
    """
    own_text, own_image = ((unsafe_text, unsafe_image) if cfg.negative == "trained"
                           else (ref["unsafe_text"], ref["unsafe_image"]))
    terms = {
        "relative": relative_redirection(unsafe_image, own_text, ref["text_target"], cfg.relative_scale)
        + relative_redirection(unsafe_text, own_image, ref["image_target"], cfg.relative_scale),
        "unimodal": -F.cosine_similarity(unsafe_text.float(), ref["text_target"].float(), dim=-1).mean()
        - F.cosine_similarity(unsafe_image.float(), ref["image_target"].float(), dim=-1).mean(),
        "preservation_cosine": preservation_cosine_loss(safe_text, ref["safe_text"], safe_image, ref["safe_image"]),
        "preservation_contrastive": preservation_contrastive_loss(safe_text, ref["safe_image"], safe_image,
                                                                  ref["safe_text"], cfg.temperature),
    }
    weights = {"relative": cfg.relative_weight, "unimodal": cfg.unimodal_weight,
               "preservation_cosine": cfg.preservation_cosine, "preservation_contrastive": cfg.preservation_contrastive}
    terms["total"] = sum(weights[k] * terms[k] for k in weights)
    return terms


# ----------------------------------------------------------------------------- the run


def load_or_compute_targets(bundle: ClipBundle, dataset: QuadrupletDataset, cfg: SaferClipConfig, out: Path,
                            *, progress: bool) -> dict[str, torch.Tensor]:
    """Frozen embeddings of the four modalities, t^/v^ indices and pair similarity (cached in ``out``)."""
    path, meta_path = out / "targets.safetensors", out / "targets.json"
    key = {"base": bundle.name, "rows": len(dataset), "ids": [r.id for r in dataset.records[:3]],
           "image_target": cfg.image_target, "exclude_own_pair": cfg.exclude_own_pair, "curriculum_by": cfg.curriculum_by}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == key:
        return load_file(path)
    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, dataset.records,
                            modalities=MODALITIES, dataset=dataset, progress=progress)
    text_target = proximity_targets(emb["unsafe_text"], emb["safe_text"], exclude_own_pair=cfg.exclude_own_pair)
    if cfg.image_target == "nearest":
        image_target = proximity_targets(emb["unsafe_image"], emb["safe_image"], exclude_own_pair=cfg.exclude_own_pair)
    else:
        image_target = text_target.clone()
    text_sim = F.cosine_similarity(emb["safe_text"], emb["unsafe_text"], dim=-1)
    image_sim = F.cosine_similarity(emb["safe_image"], emb["unsafe_image"], dim=-1)
    similarity = {"text": text_sim, "image": image_sim, "both": (text_sim + image_sim) / 2}[cfg.curriculum_by]
    tensors = {**emb, "text_target": text_target, "image_target": image_target, "similarity": similarity.contiguous()}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    write_json_atomic(meta_path, key)
    return tensors


def safer_clip_step(text, vision, batch: dict, ref: dict, cfg: SaferClipConfig, optimizer, device) -> dict:
    """One optimizer step on a collated batch: embed both sides with the adapted encoders, take the frozen
    references and proximity targets of its rows from ``ref``, and step on :func:`safer_clip_terms`'s total."""
    b = batch["index"]
    batch = {k: v.to(device) for k, v in batch.items()}
    frozen = {"safe_text": ref["safe_text"][b], "safe_image": ref["safe_image"][b],
              "unsafe_text": ref["unsafe_text"][b], "unsafe_image": ref["unsafe_image"][b],
              "text_target": ref["safe_text"][ref["text_target"][b]],
              "image_target": ref["safe_image"][ref["image_target"][b]]}
    frozen = {k: v.to(device) for k, v in frozen.items()}
    n = len(b)
    ids = torch.cat([batch["safe_input_ids"], batch["unsafe_input_ids"]])
    mask = torch.cat([batch["safe_attention_mask"], batch["unsafe_attention_mask"]])
    text_emb = encode_token_batch(text, ids, mask)  # (2B, D): safe then unsafe
    image_emb = encode_pixel_batch(vision, torch.cat([batch["safe_pixels"], batch["unsafe_pixels"]]))
    terms = safer_clip_terms(safe_text=text_emb[:n], unsafe_text=text_emb[n:], safe_image=image_emb[:n],
                             unsafe_image=image_emb[n:], ref=frozen, cfg=cfg)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return terms


def run_safer_clip(inputs: MethodInputs) -> ClipBundle:
    """Train SafeR-CLIP LoRA adapters on ``inputs.train`` (or reuse them); returns the safe bundle."""
    cfg = load_settings(SaferClipConfig, overrides=inputs.overrides, prefix="safer-clip:")
    out, budget = inputs.out, inputs.budget
    if (out / "summary.json").is_file():
        return apply_adapters(load_clip(inputs.base), out / "adapters")
    started = time.perf_counter()
    torch.manual_seed(inputs.seed)
    bundle = load_clip(inputs.base)
    records, report = read_quadruplets(Path(inputs.train))
    if budget.max_rows:
        records = records[: budget.max_rows]
    missing = [m for m in MODALITIES if m not in report.modalities]
    if missing:
        raise DataError(f"safer-clip needs all four modalities in {inputs.train}; missing: {', '.join(missing)}")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bundle.text.to(device)
    bundle.vision.to(device)
    side = int(bundle.vision.config.image_size)
    cache_gib = len(records) * 2 * 3 * side * side * 4 / 2**30
    dataset = QuadrupletDataset(records, bundle.image_processor, MODALITIES,
                                cache_images=cfg.num_workers == 0 and cache_gib <= cfg.image_cache_gb)
    ref = load_or_compute_targets(bundle, dataset, cfg, out, progress=inputs.progress)
    stage = curriculum_buckets(ref["similarity"], easy=cfg.easy) if cfg.curriculum else torch.zeros(len(records), dtype=torch.long)

    bundle.text.requires_grad_(False)
    bundle.vision.requires_grad_(False)
    targets = [m.strip() for m in cfg.target_modules.split(",") if m.strip()]
    text = add_lora(bundle.text, lora_config(cfg.lora_r, cfg.lora_alpha, 0.0, targets))
    vision = add_lora(bundle.vision, lora_config(cfg.lora_r, cfg.lora_alpha, 0.0, targets))
    params = [p for m in (text, vision) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    collate = QuadrupletCollator(bundle.tokenizer)
    generator = torch.Generator().manual_seed(inputs.seed)

    epochs = budget.epochs
    plan = [(e, (stage <= (epoch_stage(e, epochs) if cfg.curriculum else 2)).nonzero().flatten().tolist()) for e in range(epochs)]
    total = sum(math.floor(len(idx) / budget.batch_size) or 1 for _, idx in plan)
    log, step = [], 0
    text.train()
    vision.train()
    with tqdm(total=total, desc="safer-clip", disable=not inputs.progress) as bar:
        for epoch, indices in plan:
            loader = DataLoader(Subset(dataset, indices), batch_size=min(budget.batch_size, len(indices)), shuffle=True,
                                drop_last=True, collate_fn=collate, generator=generator, num_workers=cfg.num_workers)
            for batch in loader:
                terms = safer_clip_step(text, vision, batch, ref, cfg, optimizer, device)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total'].item():.3f}", stage=epoch_stage(epoch, epochs))
                if step % cfg.log_every == 0 or step == 1:
                    log.append({"epoch": epoch, "step": step, "stage": epoch_stage(epoch, epochs) if cfg.curriculum else 2,
                                **{k: float(v.detach()) for k, v in terms.items()}})
            print(f"[safer-clip] epoch {epoch + 1}/{epochs}: {len(indices)} pairs (curriculum stage "
                  f"{epoch_stage(epoch, epochs) if cfg.curriculum else 2}), step {step}, loss {terms['total'].item():.3f}",
                  flush=True)
    text.eval()
    vision.eval()
    bundle.text, bundle.vision = text, vision
    save_adapters(bundle, out / "adapters")
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    write_json_atomic(out / "config.json", {"config": asdict(cfg), "budget": asdict(budget), "seed": inputs.seed,
                                            "base": str(inputs.base), "train": str(inputs.train)})
    write_json_atomic(out / "summary.json", {"steps": step, "epochs": epochs, "seconds": time.perf_counter() - started,
                                             "final_loss": log[-1]["total"] if log else None,
                                             "stage_sizes": [int((stage == s).sum()) for s in range(3)]})
    return bundle


SAFER_CLIP_FIELDS = tuple(f.name for f in fields(SaferClipConfig))
