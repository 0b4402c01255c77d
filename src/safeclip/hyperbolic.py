"""Lorentz-model (hyperboloid) geometry for HySAC: exponential map, distances, entailment cones.

HySAC (Poppi et al., CVPR 2025) builds on MERU (Desai et al., ICML 2023). A point of the hyperboloid
of curvature ``-c`` (``c > 0``) is stored by its *space part* ``x (…, D)`` only; its time part is
``x_t = sqrt(1/c + ||x||^2)``, so that ``<x, x>_L = -1/c``. The origin ("root") is ``x = 0``.

    from safeclip import hyperbolic as H
    x = H.expmap0(features * scale, curv)        # (N, D) tangent vectors at the origin -> hyperboloid
    d = H.pairwise_distance(x, y, curv)          # (N, M) geodesic distances
    r = H.origin_distance(x, curv)               # (N,) distance to the root: asinh(sqrt(c)||x||)/sqrt(c)
    loss = torch.relu(H.exterior_angle(x, y, curv) - H.half_aperture(x, curv)).mean()   # x entails y

Clamps follow the authors' code (``eps = 1e-8``): the exponential map clamps ``sqrt(c)||v||`` to
``[eps, asinh(2^15)]`` (no overflow of sinh, no division by zero at the origin), the distance clamps
``-c<x, y>_L`` below at ``1 + eps`` (arcosh is undefined below 1), and the cone functions clamp the
arguments of arcsin / arccos inside ``(-1, 1)``. In float32 the clamps of arcosh / arcsin / arccos use
float32's epsilon instead of 1e-8 (which rounds away there and would leave infinite gradients). Every function is differentiable and finite for any
finite input, including the origin (tests/unit/test_hyperbolic.py).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

EPS = 1e-8
MAX_SINH_INPUT = math.asinh(2**15)  # sinh of more overflows float16 / loses float32 precision
CONE_MIN_RADIUS = 0.1  # K of the half-aperture (MERU/HySAC)


def _sqrt_curv(curv: float | Tensor) -> Tensor | float:
    return curv**0.5


def _clamp_eps(eps: float, x: Tensor) -> float:
    """``eps``, raised to the dtype's machine epsilon where ``1 +- eps`` would round to 1 (float32:
    1 + 1e-8 == 1, where arcosh / arccos / arcsin have infinite slope and the clamp would not help)."""
    return max(eps, torch.finfo(x.dtype).eps) if x.is_floating_point() else eps


def time_component(x: Tensor, curv: float | Tensor) -> Tensor:
    """``x_t = sqrt(1/c + ||x||^2)`` of space parts ``x (…, D)``: shape ``(…,)``."""
    return torch.sqrt(1 / curv + (x * x).sum(dim=-1))


def expmap0(v: Tensor, curv: float | Tensor, eps: float = EPS) -> Tensor:
    """Exponential map at the origin: tangent vectors ``v (…, D)`` -> space parts ``(…, D)``.

    ``expmap0(v) = sinh(sqrt(c)||v||) v / (sqrt(c)||v||)`` with ``sqrt(c)||v||`` clamped to
    ``[eps, asinh(2^15)]`` inside sinh and below at ``eps`` in the division (HySAC ``lorentz.py``).
    """
    rc_norm = _sqrt_curv(curv) * v.norm(dim=-1, keepdim=True)  # (…, 1)
    return torch.sinh(rc_norm.clamp(min=eps, max=MAX_SINH_INPUT)) * v / rc_norm.clamp(min=eps)


def logmap0(x: Tensor, curv: float | Tensor, eps: float = EPS) -> Tensor:
    """Inverse of :func:`expmap0` (up to its clamps): space parts ``(…, D)`` -> tangent vectors at the origin."""
    rc_norm = _sqrt_curv(curv) * x.norm(dim=-1, keepdim=True)
    return torch.asinh(rc_norm) * x / rc_norm.clamp(min=eps)


def pairwise_inner(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Lorentz inner products ``<x_i, y_j>_L = x_i . y_j - x_t,i y_t,j``: ``(N, M)`` from ``(N, D)``, ``(M, D)``."""
    return x @ y.T - time_component(x, curv)[:, None] * time_component(y, curv)[None, :]


def inner(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Row-wise Lorentz inner products ``<x_i, y_i>_L``: ``(…,)`` from two ``(…, D)``."""
    return (x * y).sum(dim=-1) - time_component(x, curv) * time_component(y, curv)


def _distance_from_inner(lorentz_inner: Tensor, curv: float | Tensor, eps: float) -> Tensor:
    eps = _clamp_eps(eps, lorentz_inner)
    return torch.acosh((-curv * lorentz_inner).clamp(min=1 + eps)) / _sqrt_curv(curv)


def pairwise_distance(x: Tensor, y: Tensor, curv: float | Tensor, eps: float = EPS) -> Tensor:
    """Geodesic distances ``d(x_i, y_j) = arcosh(-c <x_i, y_j>_L) / sqrt(c)``: ``(N, M)``.

    The arcosh argument is clamped below at ``1 + eps`` (HySAC ``lorentz.py``), so the distance of
    a point to itself is ``arcosh(1 + eps)/sqrt(c)``: 1.4e-4 for ``eps = 1e-8`` in float64; in float32,
    where ``1 + 1e-8 == 1``, eps is raised to float32's epsilon (the floor is then 4.9e-4) so that the
    gradient stays finite.
    """
    return _distance_from_inner(pairwise_inner(x, y, curv), curv, eps)


def distance(x: Tensor, y: Tensor, curv: float | Tensor, eps: float = EPS) -> Tensor:
    """Row-wise geodesic distances ``d(x_i, y_i)``: ``(…,)``."""
    return _distance_from_inner(inner(x, y, curv), curv, eps)


def origin_distance(x: Tensor, curv: float | Tensor) -> Tensor:
    """Distance of each point to the origin ``asinh(sqrt(c)||x||)/sqrt(c)``: ``(…,)`` (exact, no clamp)."""
    rc = _sqrt_curv(curv)
    return torch.asinh(rc * x.norm(dim=-1)) / rc


def half_aperture(x: Tensor, curv: float | Tensor, min_radius: float = CONE_MIN_RADIUS, eps: float = EPS) -> Tensor:
    """Half-aperture of the entailment cone at ``x``: ``arcsin(2K / (sqrt(c)||x||))``, shape ``(…,)``.

    Clamped to ``[-1 + eps, 1 - eps]`` inside arcsin, so the aperture lies in ``(0, pi/2)`` and is
    ``~pi/2`` for points within ``2K/sqrt(c)`` of the origin (the cone covers the half-space there).
    """
    ratio = 2 * min_radius / (x.norm(dim=-1) * _sqrt_curv(curv) + eps)
    bound = 1 - _clamp_eps(eps, ratio)
    return torch.asin(ratio.clamp(min=-bound, max=bound))


def exterior_angle(x: Tensor, y: Tensor, curv: float | Tensor, eps: float = EPS) -> Tensor:
    """Exterior angle at ``x`` of the geodesic triangle (origin, x, y), row-wise: ``(…,)`` in ``[0, pi]``.

    ``ext(x, y) = arccos((y_t + c<x,y>_L x_t) / (||x|| sqrt((c<x,y>_L)^2 - 1)))``: 0 when ``y`` lies on
    the geodesic ray from the origin through ``x`` beyond ``x``; ``y`` is inside the cone of ``x`` when
    the angle is at most :func:`half_aperture` of ``x``. Denominator and arccos argument are clamped.
    """
    x_time, y_time = time_component(x, curv), time_component(y, curv)
    c_xyl = curv * ((x * y).sum(dim=-1) - x_time * y_time)
    numerator = y_time + c_xyl * x_time
    denominator = x.norm(dim=-1) * torch.sqrt((c_xyl**2 - 1).clamp(min=eps)) + eps
    bound = 1 - _clamp_eps(eps, numerator)
    return torch.acos((numerator / denominator).clamp(min=-bound, max=bound))


def entailment_loss(general: Tensor, specific: Tensor, curv: float | Tensor, aperture_scale: float = 1.0,
                    min_radius: float = CONE_MIN_RADIUS) -> Tensor:
    """HySAC/MERU entailment loss "general entails specific": ``mean_i max(0, ext(x_i, y_i) - eta aper(x_i))``.

    ``general (N, D)`` holds the cone apexes x (closer to the origin), ``specific (N, D)`` the points y
    that should lie inside them; ``aperture_scale`` is eta (HySAC: 1).
    """
    angle = exterior_angle(general, specific, curv)
    aperture = half_aperture(general, curv, min_radius=min_radius)
    return torch.relu(angle - aperture_scale * aperture).mean()
