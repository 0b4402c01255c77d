"""Adversarial training for Safe-CLIP (``loss.adversarial``): an inner attack per step, then redirection on its output.

    safeclip train --config configs/vit-l-14_safe-clip.yaml loss.adversarial.enabled=true loss.adversarial.image_eps=4

Each training step (Madry et al. 2018's min-max; AdvUnlearn, Zhang et al. NeurIPS 2024, for the text side):

* **text**: a perturbation ``delta`` of the unsafe caption's input token embeddings (every attended position)
  within ``text_eps`` x the token-embedding table's RMS entry (L-inf per entry, or L2 per prompt), found by
  ``text_steps`` ascent steps on cos(T(t* + delta), T0(t*)): the fine-tuned text encoder is pushed back toward
  the frozen encoder's unsafe embedding, the concept Safe-CLIP removes.
  With ``text_suffix`` N > 0 the caption is kept and N token slots are appended before its end token (random
  vocabulary tokens, redrawn every step); only their embeddings are perturbed, within the same budget around
  the drawn tokens: the threat model of the suffix attacks ``safeclip attack`` runs (GCG, PEZ).
* **image**: PGD (:func:`safeclip.attacks.image.pgd`) within ``image_eps``/255 on the unsafe image, ascending
  cos(V(v*'), V0(v*)).

The redirection terms Eq. 4 and Eq. 5 (with the configured weights) are computed again on T(t* + delta) and
V(v*'), against the same references T0(t), V0(v), and added as ``weight`` x that sum: ``terms["adversarial"]``
(logged with the other terms) and ``terms["total"] += weight * terms["adversarial"]``. The preservation terms
(Eq. 6, 7) are unchanged. The inner attack differentiates only with respect to its perturbation (no gradient
reaches the LoRA parameters from it); the term is computed on each process's own shard (never all-gathered).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from safeclip.attacks.image import PixelBudget, pgd, pixel_space
from safeclip.config import AdversarialSettings, TrainConfig
from safeclip.losses import safe_clip_objective
from safeclip.models.clip import encode_pixel_batch, encode_token_batch
from safeclip.models.lora import adapters_disabled

REDIRECTION_TERMS = ("redirection_contrastive", "redirection_cosine")


@contextlib.contextmanager
def token_embeddings_shifted(text_model: torch.nn.Module, delta: torch.Tensor) -> Iterator[None]:
    """Inside, the text encoder's input token embeddings ``(B, L, H)`` are shifted by ``delta`` (differentiable)."""
    handle = text_model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: output + delta.to(output.dtype))
    try:
        yield
    finally:
        handle.remove()


def embedding_scale(text_model: torch.nn.Module) -> float:
    """RMS entry of the token-embedding table: the unit of ``text_eps``, so one setting fits every CLIP size."""
    return float(text_model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())


def project_delta(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``delta (B, L, H)`` onto the budget: every entry in [-eps, eps] (linf) or each prompt's L2 norm <= eps (l2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    return delta * (eps / norms).clamp(max=1.0)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The gradient's sign (linf) or the gradient scaled to unit L2 norm per prompt (l2)."""
    if norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]


def text_attack_objective(text_model, input_ids, attention_mask, delta, target) -> torch.Tensor:
    """``(B,)`` cos(T(t* + delta), T0(t*)): what the text attack raises."""
    with token_embeddings_shifted(text_model, delta):
        embeds = encode_token_batch(text_model, input_ids, attention_mask)
    return F.cosine_similarity(embeds.float(), target.float(), dim=-1)


def perturb_token_embeddings(text_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, target: torch.Tensor,
                             settings: AdversarialSettings, *, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, L, H)`` perturbation of the attended token embeddings (or of ``positions (B, L)`` only) within the
    budget that raises :func:`text_attack_objective` (``text_steps`` steps of size 2.5 eps / steps, each
    projected; PGD's rule)."""
    hidden = text_model.get_input_embeddings().weight.shape[1]
    eps = settings.text_eps * embedding_scale(text_model)
    where = attention_mask if positions is None else positions
    mask = where[:, :, None].to(torch.float32).expand(-1, -1, hidden)
    delta = torch.zeros(mask.shape, device=input_ids.device)
    step = 2.5 * eps / max(settings.text_steps, 1)
    for _ in range(settings.text_steps):
        delta = delta.detach().requires_grad_(True)
        value = text_attack_objective(text_model, input_ids, attention_mask, delta, target)
        (grad,) = torch.autograd.grad(value.sum(), delta)
        delta = project_delta(delta.detach() + step * ascent_direction(grad * mask, settings.text_norm), eps,
                              settings.text_norm) * mask
    return delta.detach()


def special_token_ids(text_model: torch.nn.Module) -> set[int]:
    """The text config's begin, end and padding token ids (never drawn as suffix tokens)."""
    config = text_model.config
    return {i for i in (config.bos_token_id, config.eos_token_id, config.pad_token_id) if i is not None}


def with_suffix_slots(text_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, slots)``: each row's caption, then ``n`` random vocabulary tokens, then its end token
    (``[bos] caption s_1 .. s_n [eos] pad..``, as :func:`safeclip.attacks.text.adversarial_slots` lays out an
    attacked prompt); a caption too long for the encoder's positions loses its last tokens to make room.
    ``slots (B, L')`` is 1 on the suffix positions."""
    limit = text_model.config.max_position_embeddings
    lengths = attention_mask.sum(dim=1).tolist()
    width = min(max(lengths) + n, limit)
    if n + 2 > limit:
        raise ValueError(f"loss.adversarial.text_suffix={n} does not fit in the text encoder's {limit} positions")
    usable = torch.ones(text_model.get_input_embeddings().num_embeddings, dtype=torch.bool)
    usable[list(special_token_ids(text_model))] = False
    allowed = usable.nonzero().flatten()
    pad = text_model.config.pad_token_id if text_model.config.pad_token_id is not None else input_ids[0, -1].item()
    ids = torch.full((len(lengths), width), pad, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(ids, dtype=attention_mask.dtype)
    slots = torch.zeros_like(ids, dtype=torch.float32)
    for row, length in enumerate(lengths):
        body = min(length - 1, limit - 1 - n)  # bos + caption tokens kept
        suffix = allowed[torch.randint(len(allowed), (n,))].to(ids.device)
        ids[row, :body] = input_ids[row, :body]
        ids[row, body : body + n] = suffix
        ids[row, body + n] = input_ids[row, length - 1]  # the end token
        mask[row, : body + n + 1] = 1
        slots[row, body : body + n] = 1
    return ids, mask, slots


def attacked_unsafe_text(text_model, text_base, batch: dict, settings: AdversarialSettings) -> torch.Tensor:
    """T(t* + delta) ``(B, D)`` with gradient to the trained encoder, delta from :func:`perturb_token_embeddings`
    (on the caption's tokens, or on ``text_suffix`` appended slots)."""
    ids, mask = batch["unsafe_input_ids"], batch["unsafe_attention_mask"]
    with torch.no_grad(), adapters_disabled(text_base):
        target = encode_token_batch(text_base, ids, mask)  # T0(t*)
    slots = None
    if settings.text_suffix:
        ids, mask, slots = with_suffix_slots(text_model, ids, mask, settings.text_suffix)
    delta = perturb_token_embeddings(text_model, ids, mask, target, settings, positions=slots)
    with token_embeddings_shifted(text_model, delta):
        return encode_token_batch(text_model, ids, mask)


def attacked_unsafe_image(vision_model, vision_base, batch: dict, settings: AdversarialSettings, image_processor,
                          dtype: torch.dtype) -> torch.Tensor:
    """V(v*') ``(B, D)`` with gradient to the trained encoder, v*' from PGD within ``image_eps``/255."""
    pixels = batch["unsafe_pixels"].to(dtype)
    with torch.no_grad(), adapters_disabled(vision_base):
        target = encode_pixel_batch(vision_base, pixels).float()  # V0(v*)
    to01, from01 = pixel_space(image_processor)

    def objective(images: torch.Tensor) -> torch.Tensor:
        embeds = encode_pixel_batch(vision_model, from01(images).to(dtype))
        return F.cosine_similarity(embeds.float(), target, dim=-1)

    budget = PixelBudget(eps=settings.image_eps, steps=settings.image_steps)
    attacked = pgd(objective, to01(pixels), budget)
    return encode_pixel_batch(vision_model, from01(attacked).to(dtype))


def add_adversarial_terms(terms: dict[str, torch.Tensor], text_model, vision_model, text_base, vision_base, batch: dict,
                          refs: dict[str, torch.Tensor], cfg: TrainConfig, dtype: torch.dtype,
                          image_processor) -> dict[str, torch.Tensor]:
    """``terms`` plus ``adversarial`` (Eq. 4 + Eq. 5, configured weights, on the attacked unsafe inputs) and the
    total raised by ``loss.adversarial.weight`` x it. A modality with 0 steps or no unsafe input is left out."""
    settings = cfg.loss.adversarial
    unsafe_text = unsafe_image = None
    if settings.text_steps > 0 and "unsafe_input_ids" in batch:
        unsafe_text = attacked_unsafe_text(text_model, text_base, batch, settings)
    if settings.image_steps > 0 and "unsafe_pixels" in batch:
        unsafe_image = attacked_unsafe_image(vision_model, vision_base, batch, settings, image_processor, dtype)
    if unsafe_text is None and unsafe_image is None:
        return terms
    weights = {name: value for name, value in cfg.loss.weights().items() if name.startswith(REDIRECTION_TERMS)}
    adversarial = safe_clip_objective(
        safe_text=None, unsafe_text=unsafe_text, safe_image=None, unsafe_image=unsafe_image,
        safe_text_ref=refs.get("safe_text_ref"), safe_image_ref=refs.get("safe_image_ref"), weights=weights,
        temperature=cfg.loss.temperature, info_nce_scale=cfg.loss.info_nce_scale, cosine_form=cfg.loss.cosine_form,
    )["total"]
    return {**terms, "adversarial": adversarial, "total": terms["total"] + settings.weight * adversarial}
