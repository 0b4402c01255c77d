"""HySAC (Hyperbolic Safety-Aware CLIP, Poppi et al., CVPR 2025): model, losses, safety traversal, NSFW classifier.

- :mod:`safeclip.hyperbolic`: the Lorentz geometry (exp map, distances, cones)
- :mod:`safeclip.hysac.losses`: the four contrastive and three entailment terms
- :mod:`safeclip.hysac.model`: LoRA CLIP encoders lifted to the hyperboloid; save / load, the authors' checkpoint layout
- :mod:`safeclip.hysac.traversal`: safety bounds, safety traversal (authors' rule and geodesic), allowed access
- :mod:`safeclip.hysac.classifier`: safe / unsafe by distance to the origin, threshold chosen on validation data
"""
