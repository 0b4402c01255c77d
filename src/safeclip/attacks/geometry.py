"""The similarity an attack optimises and scores: the attacked model's own geometry.

    from safeclip.attacks.geometry import attack_geometry
    geometry = attack_geometry(bundle, "text")        # text queries (GCG / PEZ); "image" for PGD
    loss = geometry.loss(embeddings, targets)          # (B,) lower = closer to the target: what GCG / PEZ minimise
    gain = geometry.gain(embeddings, targets)          # (B,) higher = closer: what PGD ascends
    flags = top1_unsafe(geometry.queries(q), safe, unsafe, similarity=geometry.similarity)   # the protocol's scan

- **cosine** (every CLIP bundle): ranking by cosine (the protocol's default scan, ``similarity=None``); loss
  ``1 - cos(e, t)`` (as MMA-Diffusion's ``textual_attack.py``), gain ``cos(e, t)`` written ``1 - loss``.
- **lorentz** (a HySAC bundle, :class:`safeclip.hysac.model.HysacBundle`): ranking by the Lorentz inner product
  of the hyperboloid points (:func:`safeclip.hysac.evaluate.lorentz_similarity`, the order of ``-d`` and exactly
  what ``HysacBundle.score`` ranks by); loss the geodesic distance ``d(e, t) = arcosh(-c <e, t>_L) / sqrt(c)``
  (:func:`safeclip.hyperbolic.distance`), gain ``-d``. With the bundle's ``traversal`` on (``hysac+traversal``),
  every query is traversed first (text queries with bound ``V``, image queries with ``S``;
  :func:`safeclip.hysac.traversal.traverse_queries`) in the loss, the gain and the scan alike, as its ``score``
  does: the attack sees the traversal (an adaptive, white-box attack on the whole scoring path).

A token attack's loss only has to be "lower is better" (``1 - cos`` is in [0, 2], a distance in [0, inf)); the
reports give ``cosine_before/after`` (mean cosine to the target) for cosine models and
``distance_before/after`` (mean geodesic distance to the target) for Lorentz ones (:meth:`Geometry.objective`).
``target=base`` (the base CLIP's embedding of the unsafe query) is lifted by a HySAC model's own head
(``from_clip``): the point where its encoders would put the base's features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from safeclip.attacks.text import PairLoss, cosine_loss
from safeclip.eval.retrieval import Similarity
from safeclip.models.clip import ClipBundle

GEOMETRIES = ("cosine", "lorentz")


def _identity(points: torch.Tensor) -> torch.Tensor:
    return points


@dataclass(frozen=True)
class Geometry:
    """How one model ranks (``similarity``, with ``queries`` applied to the queries first) and what its attacks
    minimise (``loss``); ``offset - loss`` is the gain PGD ascends and the reports' cosine."""

    name: str  # "cosine" or "lorentz"
    description: str  # written into the reports, e.g. "lorentz (c=1.3), queries traversed (authors' rule)"
    loss: PairLoss
    similarity: Similarity | None = None  # pairwise (Q, D), (G, D) -> (Q, G); None: cosine (the protocol's scan)
    queries: Callable[[torch.Tensor], torch.Tensor] = _identity  # (Q, D) -> (Q, D): the queries as scored
    from_clip: Callable[[torch.Tensor], torch.Tensor] = _identity  # a CLIP's projected features (N, D) as points here
    offset: float = 0.0  # gain = offset - loss: 1 for cosine (gain = cos), 0 for lorentz (gain = -d)
    closeness_key: str = "distance"  # what the reports' objective shows: "cosine" (the gain) or "distance" (the loss)

    def gain(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the per-pair similarity (the diagonal form of the ranking: cos, or ``-d``), higher = closer to the
        target: what PGD ascends. ``embeddings (B, D)`` (queries, traversed first where the model traverses),
        ``targets (B, D)``."""
        return self.offset - self.loss(embeddings, targets)

    def closeness(self, gain: torch.Tensor) -> float:
        """The mean of what the reports show from gains ``(B,)``: the cosine, or the distance (``-gain``)."""
        return float(gain.mean() if self.closeness_key == "cosine" else (-gain).mean())

    def objective(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        """The reports' ``objective`` from the gains ``(B,)`` before and after an attack: ``{"geometry",
        "cosine_before", "cosine_after"}`` or ``{"geometry", "distance_before", "distance_after"}`` (means)."""
        key = self.closeness_key
        return {"geometry": self.description, f"{key}_before": self.closeness(before),
                f"{key}_after": self.closeness(after)}


COSINE = Geometry(name="cosine", description="cosine", loss=cosine_loss, offset=1.0, closeness_key="cosine")


def lorentz_geometry(curv: float, *, modality: str = "text", bounds: dict | None = None, traversal: str | None = None,
                     from_clip: Callable[[torch.Tensor], torch.Tensor] = _identity) -> Geometry:
    """HySAC's geometry on the hyperboloid of curvature ``-curv``; ``traversal`` ("authors" / "geodesic") moves
    ``modality`` queries first, with ``bounds`` (see the module docstring); ``from_clip``: the model's lift of a
    CLIP's projected features (its head)."""
    from safeclip import hyperbolic as H
    from safeclip.hysac.evaluate import lorentz_similarity
    from safeclip.hysac.traversal import traverse_queries

    def queries(points: torch.Tensor) -> torch.Tensor:
        return traverse_queries(points, modality, bounds, curv, rule=traversal) if traversal else points

    def loss(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B,) geodesic distance
        return H.distance(queries(embeddings.float()), targets.float().to(embeddings.device), curv)

    moved = f", {modality} queries traversed ({traversal} rule)" if traversal else ""
    return Geometry(name="lorentz", description=f"lorentz (c={curv:.4g}, ranked by -distance){moved}", loss=loss,
                    similarity=lorentz_similarity(curv), queries=queries, from_clip=from_clip)


def attack_geometry(bundle: ClipBundle, modality: str) -> Geometry:
    """The geometry ``bundle`` ranks ``modality`` queries in ("text": T* queries, "image": V* queries)."""
    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    name = getattr(bundle, "geometry", "cosine")
    if name == "cosine":
        return COSINE
    if name == "lorentz":
        def lift(features: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return bundle.head.lift(features.to(bundle.head.curv.device), modality).float().cpu()

        return lorentz_geometry(bundle.curvature(), modality=modality, bounds=bundle.bounds, traversal=bundle.traversal,
                                from_clip=lift)
    raise ValueError(f"{bundle.name} has geometry {name!r}; the attacks know {', '.join(GEOMETRIES)}")
