"""Lorentz geometry (safeclip.hyperbolic) against hand-computed values and identities.

Hand derivations use c = 1 unless stated: the point at geodesic distance a from the origin along
axis e has space part sinh(a) e and time part cosh(a), so for two points on one axis on opposite
sides, -<x, y>_L = sinh a sinh b + cosh a cosh b = cosh(a + b).
"""

import math

import pytest
import torch

from safeclip import hyperbolic as H


def point(a: float, axis: int = 0, dim: int = 3, sign: float = 1.0, curv: float = 1.0) -> torch.Tensor:
    """Space part of the point at distance ``a`` from the origin along ``sign * e_axis`` (curvature -c)."""
    x = torch.zeros(dim, dtype=torch.float64)
    x[axis] = sign * math.sinh(math.sqrt(curv) * a) / math.sqrt(curv)
    return x


def test_expmap0_by_hand():
    """expmap0([1, 0]) = sinh(1) [1, 0]; with c = 4: sinh(2 * 1) / 2 [1, 0]."""
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert H.expmap0(v, 1.0)[0, 0].item() == pytest.approx(math.sinh(1.0), rel=1e-12)
    assert H.expmap0(v, 4.0)[0, 0].item() == pytest.approx(math.sinh(2.0) / 2, rel=1e-12)


def test_expmap0_keeps_geodesic_length_and_logmap0_inverts_it():
    """The root distance of expmap0(v) is ||v||, for several curvatures; logmap0 recovers v."""
    torch.manual_seed(0)
    v = torch.randn(6, 5, dtype=torch.float64)
    for curv in (0.1, 1.0, 3.0):
        x = H.expmap0(v, curv)
        torch.testing.assert_close(H.origin_distance(x, curv), v.norm(dim=-1))
        torch.testing.assert_close(H.logmap0(x, curv), v)


def test_points_lie_on_the_hyperboloid():
    """<x, x>_L = -1/c for mapped points."""
    x = H.expmap0(torch.randn(4, 3, dtype=torch.float64), 2.0)
    torch.testing.assert_close(H.inner(x, x, 2.0), torch.full((4,), -0.5, dtype=torch.float64))


def test_distance_by_hand_opposite_sides():
    """x at distance 1 along +e0, y at distance 2 along -e0: d = arcosh(cosh 3) = 3."""
    x, y = point(1.0), point(2.0, sign=-1.0)
    assert H.distance(x, y, 1.0).item() == pytest.approx(3.0, rel=1e-9)
    assert H.pairwise_distance(x[None], y[None], 1.0).item() == pytest.approx(3.0, rel=1e-9)


def test_distance_with_curvature_by_hand():
    """With c = 4 the same construction gives geodesic lengths in the scaled space: d = 1 + 2."""
    x, y = point(1.0, curv=4.0), point(2.0, sign=-1.0, curv=4.0)
    assert H.distance(x, y, 4.0).item() == pytest.approx(3.0, rel=1e-9)


def test_distance_to_self_is_zero():
    """Zero up to the clamp's floor arcosh(1 + eps): float64 with eps=0 is ~0; float32 floors at arcosh(1 + 2^-23)."""
    x32 = torch.tensor([[3.0, 4.0]])  # x_t = sqrt(26), -<x, x>_L = 26 - 25 = 1 exactly
    assert H.pairwise_distance(x32, x32, 1.0).item() == pytest.approx(math.acosh(1 + 2**-23), rel=1e-3)
    x64 = H.expmap0(torch.randn(5, 4, dtype=torch.float64), 1.0)
    assert H.pairwise_distance(x64, x64, 1.0, eps=0.0).diagonal().abs().max().item() < 1e-6
    # the authors' eps bounds it in float64: arcosh(1 + 1e-8)
    assert H.distance(x64, x64, 1.0).max().item() <= math.acosh(1 + 1e-8) + 1e-12


def test_pairwise_distance_from_origin_is_the_origin_formula():
    """d(0, x) = asinh(sqrt(c) ||x||) / sqrt(c), pairwise and closed form."""
    torch.manual_seed(1)
    x = torch.randn(7, 4, dtype=torch.float64) * 3
    origin = torch.zeros(1, 4, dtype=torch.float64)
    for curv in (0.5, 1.0, 2.0):
        closed = torch.asinh(math.sqrt(curv) * x.norm(dim=-1)) / math.sqrt(curv)
        torch.testing.assert_close(H.pairwise_distance(origin, x, curv)[0], closed)
        torch.testing.assert_close(H.origin_distance(x, curv), closed)


def test_pairwise_matches_rowwise_and_is_symmetric():
    x = H.expmap0(torch.randn(4, 3, dtype=torch.float64), 1.0)
    y = H.expmap0(torch.randn(4, 3, dtype=torch.float64), 1.0)
    d = H.pairwise_distance(x, y, 1.0)
    torch.testing.assert_close(d.diagonal(), H.distance(x, y, 1.0))
    torch.testing.assert_close(d, H.pairwise_distance(y, x, 1.0).T)


def test_half_aperture_by_hand_and_bounds():
    """sqrt(c)||x|| = 0.4, K = 0.1: arcsin(0.2 / 0.4) = pi/6; in (0, pi/2], ~pi/2 near the root, falling outward."""
    x = torch.tensor([[0.4, 0.0]], dtype=torch.float64)
    assert H.half_aperture(x, 1.0).item() == pytest.approx(math.pi / 6, rel=1e-7)
    assert H.half_aperture(x / 2, 4.0).item() == pytest.approx(math.pi / 6, rel=1e-7)  # sqrt(4) * 0.2 = 0.4
    norms = torch.tensor([0.0, 1e-6, 0.1, 0.2, 0.5, 2.0, 50.0], dtype=torch.float64)
    aper = H.half_aperture(norms[:, None] * torch.tensor([[1.0, 0.0]], dtype=torch.float64), 1.0)
    assert torch.isfinite(aper).all()
    assert (aper > 0).all() and (aper <= math.pi / 2).all()
    assert aper[0].item() == pytest.approx(math.pi / 2, abs=1e-3)
    assert (aper[2:].diff() < 0).all()


def test_exterior_angle_by_hand_right_triangle():
    """x at distance a on e0, y at distance b on e1 (right angle at the origin, c = 1):
    tan(interior angle at x) = tanh(b) / sinh(a), so ext = pi - atan(tanh b / sinh a)."""
    a, b = 1.0, 0.5
    angle = H.exterior_angle(point(a), point(b, axis=1), 1.0).item()
    assert angle == pytest.approx(math.pi - math.atan(math.tanh(b) / math.sinh(a)), rel=1e-7)


def test_exterior_angle_on_and_against_the_ray():
    """y beyond x on the ray from the origin: angle ~0; y between the origin and x: angle ~pi."""
    x = point(1.0)
    assert H.exterior_angle(x, point(2.0), 1.0).item() == pytest.approx(0.0, abs=2e-4)
    assert H.exterior_angle(x, point(0.5), 1.0).item() == pytest.approx(math.pi, abs=2e-4)


def test_entailment_loss_on_hand_built_cones():
    """Cone at x (distance 1 on e0): y on the ray beyond x costs 0; y at distance 0.5 on e1 costs
    ext - aper = pi - atan(tanh .5 / sinh 1) - arcsin(0.2 / sinh 1); the mean over both rows is half."""
    x = point(1.0)
    inside, outside = point(2.5), point(0.5, axis=1)
    assert H.entailment_loss(x[None], inside[None], 1.0).item() == pytest.approx(0.0, abs=1e-6)
    expected = math.pi - math.atan(math.tanh(0.5) / math.sinh(1.0)) - math.asin(0.2 / math.sinh(1.0))
    assert H.entailment_loss(x[None], outside[None], 1.0).item() == pytest.approx(expected, rel=1e-6)
    both = H.entailment_loss(torch.stack([x, x]), torch.stack([inside, outside]), 1.0)
    assert both.item() == pytest.approx(expected / 2, rel=1e-6)
    # a wider cone (eta = 2) costs less
    wider = H.entailment_loss(x[None], outside[None], 1.0, aperture_scale=2.0).item()
    assert wider == pytest.approx(expected - math.asin(0.2 / math.sinh(1.0)), rel=1e-6)


def test_functions_are_finite_with_finite_gradients_at_the_clamps():
    """The origin, a huge vector and coincident points give finite values and gradients (float32)."""
    v = torch.tensor([[0.0, 0.0], [1e-12, 0.0], [1e4, 0.0], [0.3, -0.2]], requires_grad=True)
    x = H.expmap0(v, 1.0)
    y = H.expmap0(v.flip(0) * 0.5, 1.0)
    total = (H.pairwise_distance(x, y, 1.0).sum() + H.distance(x, x, 1.0).sum() + H.origin_distance(x, 1.0).sum()
             + H.half_aperture(x, 1.0).sum() + H.exterior_angle(x, y, 1.0).sum() + H.exterior_angle(x, x, 1.0).sum())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(v.grad).all()
    assert torch.isfinite(H.expmap0(torch.tensor([[1e6, 0.0]]), 10.0)).all()  # sinh clamped, no overflow
