"""The Safe-CLIP loss terms (Poppi et al., ECCV 2024, Sec. 3.2, Eq. 4-7) as pure tensor functions.

Notation of the paper: T, V are the encoders being fine-tuned, T0, V0 their frozen copies;
(v, t) a safe image-text pair, (v*, t*) its unsafe counterpart. Every function takes
*unnormalised* ``(N, D)`` embeddings and uses cosine similarity inside. ``*_ref`` arguments are
the frozen encoders' embeddings (T0(t), V0(v)); they carry no gradient.

The -1/N factor of each equation applies to each of its sums, so an InfoNCE sum is a mean
cross-entropy: Eq. 4 and Eq. 7 are each the sum of four mean cross-entropies, Eq. 5 and Eq. 6
the sum of two negative mean cosines. Each function accepts ``None`` for a missing modality
(e.g. ViSU-Text has no unsafe images) and then returns the sum of the halves it can compute.

    from safeclip.losses import redirection_contrastive_loss
    loss = redirection_contrastive_loss(unsafe_text=T_ts, safe_image_ref=V0_v,
                                        unsafe_image=V_vs, safe_text_ref=T0_t, temperature=0.01)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarities ``(N, M)`` between rows of ``a (N, D)`` and ``b (M, D)``."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def symmetric_info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Mean CE over rows plus mean CE over columns of ``cos(a_i, b_j) / tau``; pairs are (a_i, b_i).

    For each ``i``: -log softmax_j(cos(a_j, b_i)/tau)[i]  (softmax over the a's for a fixed b_i)
    and -log softmax_j(cos(a_i, b_j)/tau)[i]  (softmax over the b's for a fixed a_i); each averaged
    over i and the two means summed, matching one two-sum bracket of Eq. 4 / Eq. 7.
    """
    logits = cosine_matrix(a, b) / temperature  # (N, N); rows: a_i, columns: b_j
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)


def negative_mean_cosine(a: Tensor, b: Tensor) -> Tensor:
    """-(1/N) sum_i cos(a_i, b_i) for aligned rows of ``a, b (N, D)``."""
    return -F.cosine_similarity(a.float(), b.float(), dim=-1).mean()


def _sum_terms(terms: list[Tensor | None], name: str) -> Tensor:
    present = [t for t in terms if t is not None]
    if not present:
        raise ValueError(f"{name}: every input pair is None; give at least one modality")
    return torch.stack(present).sum()


def redirection_contrastive_loss(
    unsafe_text: Tensor | None,
    safe_image_ref: Tensor | None,
    unsafe_image: Tensor | None,
    safe_text_ref: Tensor | None,
    temperature: float = 0.01,
) -> Tensor:
    """Eq. 4: InfoNCE between T(t*) and V0(v), and between V(v*) and T0(t), both directions.

    ``unsafe_text`` = T(t*), ``safe_image_ref`` = V0(v), ``unsafe_image`` = V(v*),
    ``safe_text_ref`` = T0(t); all ``(N, D)``. Returns a scalar: four mean cross-entropies summed.
    """
    text_half = None
    if unsafe_text is not None and safe_image_ref is not None:
        text_half = symmetric_info_nce(unsafe_text, safe_image_ref, temperature)
    image_half = None
    if unsafe_image is not None and safe_text_ref is not None:
        image_half = symmetric_info_nce(safe_text_ref, unsafe_image, temperature)
    return _sum_terms([text_half, image_half], "redirection_contrastive_loss")


def redirection_cosine_loss(
    unsafe_text: Tensor | None,
    safe_text_ref: Tensor | None,
    unsafe_image: Tensor | None,
    safe_image_ref: Tensor | None,
) -> Tensor:
    """Eq. 5: -(1/N)(sum_i cos(T(t*_i), T0(t_i)) + sum_i cos(V(v*_i), V0(v_i)))."""
    text_half = None
    if unsafe_text is not None and safe_text_ref is not None:
        text_half = negative_mean_cosine(unsafe_text, safe_text_ref)
    image_half = None
    if unsafe_image is not None and safe_image_ref is not None:
        image_half = negative_mean_cosine(unsafe_image, safe_image_ref)
    return _sum_terms([text_half, image_half], "redirection_cosine_loss")


def preservation_cosine_loss(
    safe_text: Tensor | None,
    safe_text_ref: Tensor | None,
    safe_image: Tensor | None,
    safe_image_ref: Tensor | None,
) -> Tensor:
    """Eq. 6: -(1/N)(sum_i cos(T(t_i), T0(t_i)) + sum_i cos(V(v_i), V0(v_i)))."""
    text_half = None
    if safe_text is not None and safe_text_ref is not None:
        text_half = negative_mean_cosine(safe_text, safe_text_ref)
    image_half = None
    if safe_image is not None and safe_image_ref is not None:
        image_half = negative_mean_cosine(safe_image, safe_image_ref)
    return _sum_terms([text_half, image_half], "preservation_cosine_loss")


def preservation_contrastive_loss(
    safe_text: Tensor | None,
    safe_image_ref: Tensor | None,
    safe_image: Tensor | None,
    safe_text_ref: Tensor | None,
    temperature: float = 0.01,
) -> Tensor:
    """Eq. 7: InfoNCE between V0(v) and T(t), and between T0(t) and V(v), both directions.

    ``safe_text`` = T(t), ``safe_image_ref`` = V0(v), ``safe_image`` = V(v), ``safe_text_ref`` = T0(t).
    Returns a scalar: four mean cross-entropies summed.
    """
    text_half = None
    if safe_text is not None and safe_image_ref is not None:
        text_half = symmetric_info_nce(safe_text, safe_image_ref, temperature)
    image_half = None
    if safe_image is not None and safe_text_ref is not None:
        image_half = symmetric_info_nce(safe_text_ref, safe_image, temperature)
    return _sum_terms([text_half, image_half], "preservation_contrastive_loss")


LOSS_TERMS = (
    "redirection_contrastive",
    "redirection_cosine",
    "preservation_cosine",
    "preservation_contrastive",
)


def safe_clip_objective(
    *,
    safe_text: Tensor | None,
    unsafe_text: Tensor | None,
    safe_image: Tensor | None,
    unsafe_image: Tensor | None,
    safe_text_ref: Tensor | None,
    safe_image_ref: Tensor | None,
    weights: dict[str, float],
    temperature: float,
) -> dict[str, Tensor]:
    """All four terms and their weighted sum ``"total"``; a term whose inputs are all missing is skipped.

    ``weights`` maps each name of :data:`LOSS_TERMS` to its weight. Returned terms are unweighted.
    """
    candidates = {
        "redirection_contrastive": lambda: redirection_contrastive_loss(
            unsafe_text=unsafe_text, safe_image_ref=safe_image_ref, unsafe_image=unsafe_image,
            safe_text_ref=safe_text_ref, temperature=temperature),
        "redirection_cosine": lambda: redirection_cosine_loss(
            unsafe_text=unsafe_text, safe_text_ref=safe_text_ref, unsafe_image=unsafe_image,
            safe_image_ref=safe_image_ref),
        "preservation_cosine": lambda: preservation_cosine_loss(
            safe_text=safe_text, safe_text_ref=safe_text_ref, safe_image=safe_image,
            safe_image_ref=safe_image_ref),
        "preservation_contrastive": lambda: preservation_contrastive_loss(
            safe_text=safe_text, safe_image_ref=safe_image_ref, safe_image=safe_image,
            safe_text_ref=safe_text_ref, temperature=temperature),
    }
    terms: dict[str, Tensor] = {}
    for name, compute in candidates.items():
        if weights.get(name, 0.0) == 0.0:
            continue
        try:
            terms[name] = compute()
        except ValueError:  # no modality available for this term (e.g. text-only data)
            continue
    if not terms:
        raise ValueError("no Safe-CLIP loss term can be computed from the given inputs and weights")
    terms["total"] = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
    return terms
