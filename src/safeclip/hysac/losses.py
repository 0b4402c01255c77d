"""HySAC's training objective (Poppi et al., CVPR 2025, Sec. 3; authors' ``hysac/training.py``) as pure functions.

Inputs are points on the hyperboloid (space parts, ``safeclip.hyperbolic``): ``safe_text`` T(t),
``unsafe_text`` T(t*), ``safe_image`` V(v), ``unsafe_image`` V(v*), each ``(N, D)``, row i from
quadruplet i. Seven terms:

- four hyperbolic contrastive terms (HySAC's L_hSC): (T, V), (T*, V*) and the cross pairs (T, V*),
  (T*, V), all trained as positives; logits ``-d(a_i, b_j) exp(logit_scale)``, loss
  ``(CE_rows + CE_cols) / 2``;
- three entailment terms (L_hSE; "x entails y": y inside the cone of x): T entails V, T* entails V*,
  and the safe image entails the unsafe text (V entails T*), which pushes unsafe content outward.

Authors' combination: lambda = (1, 1, 1, 1, le, le, le) normalised to sum 1, total = (lambda . L) / 7
(:func:`authors_weights`); any weights can be given instead.

    from safeclip.hysac.losses import hysac_objective, authors_weights
    terms = hysac_objective(safe_text=T, unsafe_text=Ts, safe_image=V, unsafe_image=Vs, curv=c,
                            logit_scale=s, weights=authors_weights())   # {"contrastive_safe": .., "total": ..}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from safeclip import hyperbolic as H
from safeclip.errors import ConfigError

Tensor = torch.Tensor

# name -> (first, second) inputs; contrastive pairs are (text, image); entailment pairs (general, specific).
CONTRASTIVE_TERMS = {
    "contrastive_safe": ("safe_text", "safe_image"),
    "contrastive_unsafe": ("unsafe_text", "unsafe_image"),
    "contrastive_safe_text_unsafe_image": ("safe_text", "unsafe_image"),
    "contrastive_unsafe_text_safe_image": ("unsafe_text", "safe_image"),
}
ENTAILMENT_TERMS = {
    "entail_safe": ("safe_text", "safe_image"),
    "entail_unsafe": ("unsafe_text", "unsafe_image"),
    "entail_safe_image_unsafe_text": ("safe_image", "unsafe_text"),
}
LOSS_TERMS = (*CONTRASTIVE_TERMS, *ENTAILMENT_TERMS)


def authors_weights(entailment: float = 1.0) -> dict[str, float]:
    """The authors' weights: lambda = [1, 1, 1, 1, le, le, le] / sum, then divided by the 7 terms."""
    raw = {name: 1.0 for name in CONTRASTIVE_TERMS} | {name: float(entailment) for name in ENTAILMENT_TERMS}
    total = sum(raw.values())
    return {name: value / total / len(raw) for name, value in raw.items()}


def hyperbolic_contrastive_loss(text: Tensor, image: Tensor, curv: float | Tensor, logit_scale: float | Tensor) -> Tensor:
    """HySAC's contrastive term for aligned ``text (N, D)`` and ``image (N, D)`` hyperboloid points.

    ``logits_ij = -d(text_i, image_j) exp(logit_scale)``; targets are the diagonal; the mean
    cross-entropy over rows (text -> image) and over columns (image -> text) averaged.
    """
    logits = -H.pairwise_distance(text, image, curv) * torch.as_tensor(logit_scale).exp()  # (N, N)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def hysac_objective(
    *,
    safe_text: Tensor | None,
    unsafe_text: Tensor | None,
    safe_image: Tensor | None,
    unsafe_image: Tensor | None,
    curv: float | Tensor,
    logit_scale: float | Tensor,
    weights: dict[str, float],
    aperture_scale: float = 1.0,
) -> dict[str, Tensor]:
    """Every term of :data:`LOSS_TERMS` with a non-zero weight and its inputs present, plus ``"total"``.

    Returned terms are unweighted; ``total = sum_k weights[k] * term_k``. ``aperture_scale`` is the
    cone-width factor eta of the entailment terms (HySAC: 1).
    """
    unknown = set(weights) - set(LOSS_TERMS)
    if unknown:
        raise ConfigError(f"unknown HySAC loss term(s) {sorted(unknown)}; known: {', '.join(LOSS_TERMS)}")
    inputs = {"safe_text": safe_text, "unsafe_text": unsafe_text, "safe_image": safe_image, "unsafe_image": unsafe_image}
    terms: dict[str, Tensor] = {}
    for name in LOSS_TERMS:
        first, second = CONTRASTIVE_TERMS.get(name) or ENTAILMENT_TERMS[name]
        a, b = inputs[first], inputs[second]
        if weights.get(name, 0.0) == 0.0 or a is None or b is None:
            continue
        if name in CONTRASTIVE_TERMS:
            terms[name] = hyperbolic_contrastive_loss(a, b, curv, logit_scale)
        else:
            terms[name] = H.entailment_loss(a, b, curv, aperture_scale=aperture_scale)
    if not terms:
        raise ConfigError("no HySAC loss term can be computed from the given inputs and weights")
    terms["total"] = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
    return terms
