"""The Safe-CLIP loss terms (Poppi et al., ECCV 2024, Sec. 3.2, Eq. 4-7) as pure tensor functions.

Notation of the paper: T, V are the encoders being fine-tuned, T0, V0 their frozen copies;
(v, t) a safe image-text pair, (v*, t*) its unsafe counterpart. Every function takes
*unnormalised* ``(N, D)`` embeddings and uses cosine similarity inside. ``*_ref`` arguments are
the frozen encoders' embeddings (T0(t), V0(v)); they carry no gradient.

The -1/N factor of each equation applies to each of its sums, so an InfoNCE sum is a mean
cross-entropy: Eq. 4 and Eq. 7 are each the sum of four mean cross-entropies, Eq. 5 and Eq. 6
the sum of two negative mean cosines. Each function accepts ``None`` for a missing modality
(e.g. ViSU-Text has no unsafe images) and then returns the sum of the halves it can compute.
:func:`safe_clip_objective` weighs the eight per-modality halves (text / vision of each equation) one by
one, as the authors' launch script does; by default both halves of a term share the term's weight.
Everything is computed in float32 with autocast off.

    from safeclip.losses import redirection_contrastive_loss
    loss = redirection_contrastive_loss(unsafe_text=T_ts, safe_image_ref=V0_v,
                                        unsafe_image=V_vs, safe_text_ref=T0_t, temperature=0.01)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarities ``(N, M)`` between rows of ``a (N, D)`` and ``b (M, D)``, in float32 (autocast off)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def symmetric_info_nce(a: Tensor, b: Tensor, temperature: float | None = None, *,
                       logit_scale: Tensor | None = None) -> Tensor:
    """Mean CE over rows plus mean CE over columns of ``cos(a_i, b_j) / tau``; pairs are (a_i, b_i).

    For each ``i``: -log softmax_j(cos(a_j, b_i)/tau)[i]  (softmax over the a's for a fixed b_i)
    and -log softmax_j(cos(a_i, b_j)/tau)[i]  (softmax over the b's for a fixed a_i); each averaged
    over i and the two means summed, matching one two-sum bracket of Eq. 4 / Eq. 7. Half of it is CLIP's own
    pretraining loss (Radford et al., 2021), where a learnt ``logit_scale`` = 1/tau multiplies the cosines
    (give either ``temperature`` or ``logit_scale``).
    """
    with torch.autocast(device_type=a.device.type, enabled=False):
        if logit_scale is None:
            logits = cosine_matrix(a, b) / temperature  # (N, N); rows: a_i, columns: b_j
        else:  # CLIP's order of operations: the scale multiplies the unit rows of a, then the product
            logits = (logit_scale * F.normalize(a.float(), dim=-1)) @ F.normalize(b.float(), dim=-1).T
        targets = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)


def negative_mean_cosine(a: Tensor, b: Tensor) -> Tensor:
    """-(1/N) sum_i cos(a_i, b_i) for aligned rows of ``a, b (N, D)``, in float32 (autocast off)."""
    with torch.autocast(device_type=a.device.type, enabled=False):
        return -F.cosine_similarity(a.float(), b.float(), dim=-1).mean()


def paper_term(term: str, inputs: dict[str, Tensor | None], temperature: float = 0.01) -> Tensor:
    """One paper term (both halves as the equation writes them); a half whose inputs are missing is left out."""
    halves = [half for half, spec in LOSS_HALVES.items() if spec[0] == term]
    present = [compute_half(half, inputs[LOSS_HALVES[half][2]], inputs[LOSS_HALVES[half][3]],
                            temperature=temperature, info_nce_scale=1.0, cosine_form="negative")
               for half in halves
               if inputs[LOSS_HALVES[half][2]] is not None and inputs[LOSS_HALVES[half][3]] is not None]
    if not present:
        raise ValueError(f"{term}_loss: every input pair is None; give at least one modality")
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
    return paper_term("redirection_contrastive", {"unsafe_text": unsafe_text, "safe_image_ref": safe_image_ref,
                                                  "unsafe_image": unsafe_image, "safe_text_ref": safe_text_ref},
                      temperature)


def redirection_cosine_loss(
    unsafe_text: Tensor | None,
    safe_text_ref: Tensor | None,
    unsafe_image: Tensor | None,
    safe_image_ref: Tensor | None,
) -> Tensor:
    """Eq. 5: -(1/N)(sum_i cos(T(t*_i), T0(t_i)) + sum_i cos(V(v*_i), V0(v_i)))."""
    return paper_term("redirection_cosine", {"unsafe_text": unsafe_text, "safe_text_ref": safe_text_ref,
                                             "unsafe_image": unsafe_image, "safe_image_ref": safe_image_ref})


def preservation_cosine_loss(
    safe_text: Tensor | None,
    safe_text_ref: Tensor | None,
    safe_image: Tensor | None,
    safe_image_ref: Tensor | None,
) -> Tensor:
    """Eq. 6: -(1/N)(sum_i cos(T(t_i), T0(t_i)) + sum_i cos(V(v_i), V0(v_i)))."""
    return paper_term("preservation_cosine", {"safe_text": safe_text, "safe_text_ref": safe_text_ref,
                                              "safe_image": safe_image, "safe_image_ref": safe_image_ref})


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
    return paper_term("preservation_contrastive", {"safe_text": safe_text, "safe_image_ref": safe_image_ref,
                                                   "safe_image": safe_image, "safe_text_ref": safe_text_ref},
                      temperature)


LOSS_TERMS = (
    "redirection_contrastive",
    "redirection_cosine",
    "preservation_cosine",
    "preservation_contrastive",
)

# The eight per-modality halves of Eq. 4-7: half -> (paper term, kind, trained-side input, reference input).
# The authors' launch script weighs each of them on its own (see LossConfig and configs/*-authors.yaml).
LOSS_HALVES: dict[str, tuple[str, str, str, str]] = {
    "redirection_contrastive_text": ("redirection_contrastive", "info_nce", "unsafe_text", "safe_image_ref"),
    "redirection_contrastive_vision": ("redirection_contrastive", "info_nce", "unsafe_image", "safe_text_ref"),
    "redirection_cosine_text": ("redirection_cosine", "cosine", "unsafe_text", "safe_text_ref"),
    "redirection_cosine_vision": ("redirection_cosine", "cosine", "unsafe_image", "safe_image_ref"),
    "preservation_cosine_text": ("preservation_cosine", "cosine", "safe_text", "safe_text_ref"),
    "preservation_cosine_vision": ("preservation_cosine", "cosine", "safe_image", "safe_image_ref"),
    "preservation_contrastive_text": ("preservation_contrastive", "info_nce", "safe_text", "safe_image_ref"),
    "preservation_contrastive_vision": ("preservation_contrastive", "info_nce", "safe_image", "safe_text_ref"),
}

COSINE_FORMS = ("negative", "distance")


def half_weight(weights: dict[str, float], half: str) -> float:
    """A half's own weight when ``weights`` names it, else its paper term's weight (the default grouping)."""
    return float(weights.get(half, weights.get(LOSS_HALVES[half][0], 0.0)))


def check_pair(half: str, current: Tensor, reference: Tensor) -> None:
    """Both inputs of a half must be ``(N, D)`` with the same N and D; anything else is a caller's bug."""
    if current.dim() != 2 or current.shape != reference.shape:
        _, _, current_name, reference_name = LOSS_HALVES[half]
        raise ValueError(
            f"{half}: {current_name} has shape {tuple(current.shape)} and {reference_name} {tuple(reference.shape)}; "
            "both must be (N, D) with the same batch size N and embedding size D")


def compute_half(half: str, current: Tensor, reference: Tensor, *, temperature: float,
                 info_nce_scale: float, cosine_form: str) -> Tensor:
    """One half in float32: ``info_nce_scale`` x symmetric InfoNCE, or -cos (``distance``: 1 - cos)."""
    check_pair(half, current, reference)
    current, reference = current.float(), reference.float()
    if LOSS_HALVES[half][1] == "info_nce":  # rows: texts, columns: images (the value is symmetric in the two)
        texts, images = (current, reference) if half.endswith("_text") else (reference, current)
        return info_nce_scale * symmetric_info_nce(texts, images, temperature)
    loss = negative_mean_cosine(current, reference)
    return loss + 1.0 if cosine_form == "distance" else loss


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
    info_nce_scale: float = 1.0,
    cosine_form: str = "negative",
) -> dict[str, Tensor]:
    """Eq. 4-7 as eight weighted halves; returns each computed half, each paper term and ``"total"``.

    ``weights`` maps a paper term of :data:`LOSS_TERMS` (both its halves) or a half of :data:`LOSS_HALVES`
    (that half alone, overriding its term) to a weight. A half is computed when its weight is non-zero and
    both its inputs are given (e.g. ViSU-Text has no images: every half that needs one is left out); the
    decision is made from which inputs are present, never by catching errors, and mismatched shapes raise.
    A paper term's value is the unweighted sum of its computed halves; ``total`` = sum of weight x half.
    ``info_nce_scale``: 1 is Eq. 4/7 as written (CE over rows + CE over columns); the authors' code uses 0.5.
    ``cosine_form``: ``negative`` is Eq. 5/6 (-cos); ``distance`` is the authors' 1 - cos (same gradients).
    Everything runs in float32 with autocast off: cosines divided by tau = 0.01 in bf16 carry 0.05-0.1 of
    rounding noise per logit.
    """
    if cosine_form not in COSINE_FORMS:
        raise ValueError(f"cosine_form must be one of {COSINE_FORMS}, got {cosine_form!r}")
    inputs = {"safe_text": safe_text, "unsafe_text": unsafe_text, "safe_image": safe_image,
              "unsafe_image": unsafe_image, "safe_text_ref": safe_text_ref, "safe_image_ref": safe_image_ref}
    present = [value for value in inputs.values() if value is not None]
    if not present:
        raise ValueError("safe_clip_objective: every input is None")
    terms: dict[str, Tensor] = {}
    half_weights: dict[str, list[float]] = {}  # paper term -> the weights of its computed halves
    with torch.autocast(device_type=present[0].device.type, enabled=False):
        for half, (term, _, current_name, reference_name) in LOSS_HALVES.items():
            weight = half_weight(weights, half)
            current, reference = inputs[current_name], inputs[reference_name]
            if weight == 0.0 or current is None or reference is None:
                continue
            terms[half] = compute_half(half, current, reference, temperature=temperature,
                                       info_nce_scale=info_nce_scale, cosine_form=cosine_form)
            terms[term] = terms[half] if term not in terms else terms[term] + terms[half]
            half_weights.setdefault(term, []).append(weight)
    if not half_weights:
        raise ValueError("no Safe-CLIP loss term can be computed from the given inputs and weights: "
                         f"inputs given: {[name for name, value in inputs.items() if value is not None]}")
    terms["total"] = torch.stack([weighted_term(terms, term, used) for term, used in half_weights.items()]).sum()
    return terms


def weighted_term(terms: dict[str, Tensor], term: str, used: list[float]) -> Tensor:
    """weight x term when its halves share one weight (the default grouping, summed in the same order as the
    four-term objective, so its numbers are bit-identical); else the sum of weight x half."""
    if len(set(used)) == 1:
        return used[0] * terms[term]
    halves = [half for half in LOSS_HALVES if LOSS_HALVES[half][0] == term and half in terms]
    return torch.stack([weight * terms[half] for weight, half in zip(used, halves)]).sum()
