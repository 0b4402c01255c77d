"""The project's protocols for HySAC, ranked by hyperbolic distance, with and without safety traversal.

Every retrieval ranks by the Lorentz inner product ``<q, g>_L`` (higher = closer), which orders a
gallery exactly as ``-d(q, g)`` does (arcosh is increasing) and needs no clamp. With ``traversal``
("authors" or "geodesic", :mod:`safeclip.hysac.traversal`) every *query* is traversed first (text
queries with bound ``V``, image queries with ``S``); galleries stay as embedded. Safe queries lying
inside the bound are unchanged, so traversal is applied as it would be in deployment, where a query's
safety is unknown.

Groups, named as for every other model (``safeclip.compare``):

- ``"T->V"``, ``"V->T"``, ``"T*->V+V*"``, ``"V*->T+T*"``: the Safe-CLIP / HySAC retrieval protocol;
- ``"safer_t2v"``: SafeR-CLIP's T*->V; ``"safeground"``: SafeGround with similarity ``-d``;
- ``"allowed"``: HySAC Table 2 (:mod:`safeclip.eval.allowed_access`), keys ``"<direction> R@k"`` and
  ``"<direction> safe@1"``; queries pushed out to the unsafe bounds when traversal is on (``allowed_access``), as
  is when it is off.

    from safeclip.hysac.evaluate import hysac_metrics
    metrics = hysac_metrics(embeddings, curv=1.3, bounds=bounds, traversal="authors")
"""

from __future__ import annotations

import torch

from safeclip import hyperbolic as H
from safeclip.errors import ConfigError
from safeclip.eval.allowed_access import allowed_access_group
from safeclip.eval.retrieval import recall_at_k, unsafe_direction
from safeclip.eval.safeground import safeground_from_similarities
from safeclip.eval.safer_protocol import SAFER_KS
from safeclip.hysac.traversal import allow_queries, traverse_queries

Tensor = torch.Tensor


def lorentz_similarity(curv: float):
    """``(C, D), (G, D) -> (C, G)`` Lorentz inner products in float64 (same order as -distance)."""
    def similarity(queries: Tensor, gallery: Tensor) -> Tensor:
        return H.pairwise_inner(queries.double(), gallery.double(), curv)

    return similarity


def _entry(recalls: dict[int, float]) -> dict[str, float]:
    return {f"R@{k}": v for k, v in recalls.items()}


def hysac_metrics(emb: dict[str, Tensor], *, curv: float, bounds: dict | None = None,
                  traversal: str | None = None) -> dict[str, dict[str, float]]:
    """Every group of the module docstring from hyperboloid embeddings ``{safe_text, safe_image, unsafe_text, unsafe_image}``."""
    similarity = lorentz_similarity(curv)

    def queries(name: str, modality: str) -> Tensor:
        points = emb[name]
        return traverse_queries(points, modality, bounds, curv, rule=traversal) if traversal else points

    t, v = emb["safe_text"], emb["safe_image"]
    targets = torch.arange(t.shape[0])
    out = {"T->V": _entry(recall_at_k(queries("safe_text", "text"), v, targets, similarity=similarity)),
           "V->T": _entry(recall_at_k(queries("safe_image", "image"), t, targets, similarity=similarity))}
    if "unsafe_text" not in emb or "unsafe_image" not in emb:
        return out
    ts, vs = emb["unsafe_text"], emb["unsafe_image"]
    tq, vq = queries("unsafe_text", "text"), queries("unsafe_image", "image")
    out["T*->V+V*"] = unsafe_direction(tq, v, vs, similarity=similarity)
    out["V*->T+T*"] = unsafe_direction(vq, t, ts, similarity=similarity)
    out["safer_t2v"] = _entry(recall_at_k(tq, v, targets, SAFER_KS, similarity=similarity))
    out["safeground"] = safeground_from_similarities(
        -H.distance(t, v, curv), -H.distance(t, vs, curv), -H.distance(ts, v, curv), -H.distance(ts, vs, curv))
    allowed_text = allow_queries(ts, "text", bounds, curv, rule=traversal) if traversal else None
    allowed_image = allow_queries(vs, "image", bounds, curv, rule=traversal) if traversal else None
    out["allowed"] = allowed_access_group(t, v, ts, vs, similarity=similarity, text_queries=allowed_text,
                                          image_queries=allowed_image)
    return out


def radii_by_group(emb: dict[str, Tensor], curv: float) -> dict[str, list[float]]:
    """Distance to the origin of every item, per group ("safe text", "unsafe text", "safe image", "unsafe image")."""
    return {name.replace("_", " "): H.origin_distance(value.double(), curv).tolist() for name, value in emb.items()}


# the groups each protocol of safeclip.eval.evaluation writes
PROTOCOL_GROUPS = {"safe-clip": ("T->V", "V->T", "T*->V+V*", "V*->T+T*"), "safer-t2v": ("safer_t2v",),
                   "safeground": ("safeground",), "allowed-access": ("allowed",)}


def score_hysac(emb: dict[str, Tensor], protocols, *, curv: float, bounds: dict | None = None,
                traversal: str | None = None) -> dict[str, dict[str, float]]:
    """The groups of ``protocols`` (names of ``safeclip.eval.evaluation.PROTOCOLS``) from :func:`hysac_metrics`."""
    unknown = [p for p in protocols if p not in PROTOCOL_GROUPS]
    if unknown:
        raise ConfigError(f"protocol(s) {unknown} have no hyperbolic version; HySAC models support {', '.join(PROTOCOL_GROUPS)}")
    metrics = hysac_metrics(emb, curv=curv, bounds=bounds, traversal=traversal)
    return {group: metrics[group] for name in protocols for group in PROTOCOL_GROUPS[name] if group in metrics}
