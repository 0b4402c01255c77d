"""HySAC at inference: safety bounds, safety traversal (batched) and allowed access.

**Bounds** (the authors ship ``hysac_bounds.json`` but no script): for each modality and side, the
distance to the origin of a named split's items, summarised as ``up_95`` (95th percentile),
``low_05`` (5th) and ``avg``. Keys as the authors': ``S`` safe texts, ``U`` unsafe texts, ``V`` safe
images, ``G`` unsafe images. ``safeclip hysac bounds --model M --data val.jsonl --out bounds.json``.

**Traversal** (authors' ``models.py`` 192-234): a query whose root distance exceeds
``B' = B + tanh((B - alpha) / c) + 1`` (``alpha = 0.8``; divided by c, not sqrt(c), as in their code)
is moved toward the origin along its ray. ``B`` is the ``up_95`` of the *safe side of the gallery's
modality*: text queries (searching images) use ``V``, image queries (searching texts) use ``S``.

- ``rule="authors"`` (faithful): the space part gets Euclidean norm ``B'``. On the hyperboloid that
  is root distance ``asinh(sqrt(c) B') / sqrt(c)``, not ``B'``: the authors' unit mismatch, kept so
  that their numbers can be matched.
- ``rule="geodesic"``: the query is moved to root distance exactly ``B'``.

The authors' code compares ``distance > bound`` on a tensor, so it takes one query at a time; here
every function takes ``(N, D)`` and gives, row for row, what one-at-a-time application gives.

**Allowed access** (authors' ``recall_U2GandV``): for a user allowed to see unsafe content, a query
*closer* to the origin than ``B'`` of the unsafe side (``G`` for text queries, ``U`` for image
queries) is pushed *out* to it by the same rule; or the query is left alone (``push=False``).
"""

from __future__ import annotations

import math

import torch

from safeclip import hyperbolic as H
from safeclip.errors import ConfigError, DataError

Tensor = torch.Tensor

BOUND_KEYS = {"S": "safe_text", "U": "unsafe_text", "V": "safe_image", "G": "unsafe_image"}
STATS = ("up_95", "low_05", "avg")
RULES = ("authors", "geodesic")
TRAVERSAL_ALPHA = 0.8
# query modality -> the bound key of the gallery's safe side (traversal) and unsafe side (allowed access)
SAFE_BOUND_FOR_QUERY = {"text": "V", "image": "S"}
UNSAFE_BOUND_FOR_QUERY = {"text": "G", "image": "U"}


def radius_stats(radii: Tensor) -> dict[str, float]:
    """``{"up_95", "low_05", "avg"}`` of root distances ``(N,)`` (linear-interpolated percentiles)."""
    radii = radii.double()
    return {"up_95": float(torch.quantile(radii, 0.95)), "low_05": float(torch.quantile(radii, 0.05)),
            "avg": float(radii.mean())}


def compute_bounds(embeddings: dict[str, Tensor], curv: float) -> dict[str, dict[str, float]]:
    """Bounds of every modality present in ``embeddings`` (``safe_text`` -> ``S`` etc.; hyperboloid points ``(N, D)``)."""
    bounds = {key: radius_stats(H.origin_distance(embeddings[name].double(), curv))
              for key, name in BOUND_KEYS.items() if name in embeddings}
    if not bounds:
        raise DataError(f"no modality to compute bounds from; expected some of {', '.join(BOUND_KEYS.values())}")
    return bounds


def check_bounds(bounds: dict, source: str) -> dict:
    """``bounds`` if it has the authors' shape ({S, U, V, G: {up_95, low_05, avg}}, any subset of keys)."""
    if not isinstance(bounds, dict) or not bounds or set(bounds) - set(BOUND_KEYS):
        raise DataError(f"{source}: HySAC bounds must map some of {', '.join(BOUND_KEYS)} to statistics; got "
                        f"{sorted(bounds) if isinstance(bounds, dict) else type(bounds).__name__}")
    for key, stats in bounds.items():
        if not isinstance(stats, dict) or "up_95" not in stats:
            raise DataError(f"{source}: bound {key!r} lacks 'up_95' (the statistics are {', '.join(STATS)})")
    return bounds


def bound_for(bounds: dict | None, key: str) -> float:
    if not bounds or key not in bounds:
        raise ConfigError(f"HySAC traversal needs the {key} bound ({BOUND_KEYS[key]}), which the model does not carry; "
                          "compute bounds with `safeclip hysac bounds` (or load the authors' hysac_bounds.json)")
    return float(bounds[key]["up_95"])


def authors_threshold(bound: float, curv: float, alpha: float = TRAVERSAL_ALPHA) -> float:
    """``B' = B + tanh((B - alpha) / c) + 1`` (authors' ``models.py`` 203; in (B, B + 2))."""
    return bound + math.tanh((bound - alpha) / curv) + 1


def _target_norm(threshold: float, curv: float, rule: str) -> float:
    if rule == "authors":
        return threshold  # the Euclidean norm of the space part (their unit mismatch)
    if rule == "geodesic":
        return math.sinh(math.sqrt(curv) * threshold) / math.sqrt(curv)  # root distance exactly B'
    raise ConfigError(f"unknown traversal rule {rule!r}; choose from {', '.join(RULES)}")


def _move_rows(points: Tensor, selected: Tensor, norm: float) -> Tensor:
    """Rows where ``selected`` rescaled to Euclidean norm ``norm`` along their own direction; others unchanged."""
    lengths = points.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(points.dtype).tiny)
    return torch.where(selected[:, None], points * (norm / lengths), points)


def traverse(points: Tensor, bound: float, curv: float, *, rule: str = "authors", alpha: float = TRAVERSAL_ALPHA) -> Tensor:
    """Safety traversal of hyperboloid points ``(N, D)``: rows farther than ``B'`` from the origin move in to ``B'``."""
    threshold = authors_threshold(bound, curv, alpha)
    norm = _target_norm(threshold, curv, rule)
    return _move_rows(points, H.origin_distance(points, curv) > threshold, norm)


def allowed_access(points: Tensor, bound: float, curv: float, *, rule: str = "authors", alpha: float = TRAVERSAL_ALPHA) -> Tensor:
    """Allowed access: rows closer than ``B'`` (of the unsafe side's bound) to the origin move out to ``B'``."""
    threshold = authors_threshold(bound, curv, alpha)
    norm = _target_norm(threshold, curv, rule)
    return _move_rows(points, H.origin_distance(points, curv) < threshold, norm)


def traverse_queries(points: Tensor, modality: str, bounds: dict | None, curv: float, *, rule: str = "authors") -> Tensor:
    """Traversal of ``modality`` queries ("text" searches images: bound ``V``; "image" searches texts: ``S``)."""
    return traverse(points, bound_for(bounds, SAFE_BOUND_FOR_QUERY[modality]), curv, rule=rule)


def allow_queries(points: Tensor, modality: str, bounds: dict | None, curv: float, *, rule: str = "authors") -> Tensor:
    """Allowed access for ``modality`` queries (text: bound ``G``; image: ``U``)."""
    return allowed_access(points, bound_for(bounds, UNSAFE_BOUND_FOR_QUERY[modality]), curv, rule=rule)
