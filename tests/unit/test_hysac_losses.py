"""HySAC's objective (safeclip.hysac.losses): the contrastive term by hand, entailment on built cones, weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from safeclip import hyperbolic as H
from safeclip.hysac.losses import LOSS_TERMS, authors_weights, hyperbolic_contrastive_loss, hysac_objective


def on_axis(distances, axis=0, dim=2):
    """Points at the given root distances along e_axis (c = 1): space part sinh(a) e_axis."""
    x = torch.zeros(len(distances), dim, dtype=torch.float64)
    x[:, axis] = torch.sinh(torch.tensor(distances, dtype=torch.float64))
    return x


def test_contrastive_by_hand():
    """Texts at +1 and -1 on e0 and images at +1, -1: d = 0 on the diagonal, 2 off it; scale 1
    gives rows and columns CE = log(1 + e^-2) each, so the mean of the two is log(1 + e^-2)."""
    text = on_axis([1.0, -1.0])
    image = on_axis([1.0, -1.0])
    loss = hyperbolic_contrastive_loss(text, image, 1.0, logit_scale=0.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-4)  # diagonal d floors at arcosh(1 + 1e-8)


def test_contrastive_is_mean_of_directions():
    torch.manual_seed(0)
    t, v = H.expmap0(torch.randn(5, 3), 1.0), H.expmap0(torch.randn(5, 3), 1.0)
    logits = -H.pairwise_distance(t, v, 1.0) * math.exp(0.5)
    target = torch.arange(5)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert hyperbolic_contrastive_loss(t, v, 1.0, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)


def test_authors_weights():
    """lambda = [1]*7 / 7 then / 7 -> 1/49 each; with le = 2: contrastive 1/(10*7), entailment 2/(10*7)."""
    assert all(w == pytest.approx(1 / 49) for w in authors_weights().values())
    w = authors_weights(2.0)
    assert w["contrastive_safe"] == pytest.approx(1 / 70) and w["entail_unsafe"] == pytest.approx(2 / 70)
    assert set(w) == set(LOSS_TERMS)


def test_entailment_terms_on_hand_built_cones():
    """Safe text at root distance 0.5, safe image at 1 on the same ray, unsafe text at 2 on it and unsafe
    image at 3 on it: every entailment holds (T < V < T* < V* along one ray), so all three terms are 0.
    Moving the unsafe text to the other side of the origin breaks only the V entails T* and the T* entails V*
    terms, each by ext - aper computed here by hand."""
    t, v, ts, vs = on_axis([0.5]), on_axis([1.0]), on_axis([2.0]), on_axis([3.0])
    terms = hysac_objective(safe_text=t, unsafe_text=ts, safe_image=v, unsafe_image=vs, curv=1.0, logit_scale=0.0,
                            weights=authors_weights())
    for name in ("entail_safe", "entail_unsafe", "entail_safe_image_unsafe_text"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name
    flipped = on_axis([-2.0])
    terms = hysac_objective(safe_text=t, unsafe_text=flipped, safe_image=v, unsafe_image=vs, curv=1.0,
                            logit_scale=0.0, weights=authors_weights())
    assert terms["entail_safe"].item() == pytest.approx(0.0, abs=1e-6)
    # V (at 1) against T* behind the origin: exterior angle pi, aperture arcsin(0.2 / sinh 1)
    assert terms["entail_safe_image_unsafe_text"].item() == pytest.approx(math.pi - math.asin(0.2 / math.sinh(1.0)), abs=1e-3)
    # T* (at -2) against V* (at +3): angle pi, aperture arcsin(0.2 / sinh 2)
    assert terms["entail_unsafe"].item() == pytest.approx(math.pi - math.asin(0.2 / math.sinh(2.0)), abs=1e-3)


def test_total_is_weighted_sum_and_zero_weight_skips():
    torch.manual_seed(1)
    pts = {k: H.expmap0(torch.randn(4, 3), 1.0) for k in ("safe_text", "unsafe_text", "safe_image", "unsafe_image")}
    weights = {"contrastive_safe": 2.0, "entail_safe": 0.5, "entail_unsafe": 0.0}
    terms = hysac_objective(**pts, curv=1.0, logit_scale=1.0, weights=weights)
    assert set(terms) == {"contrastive_safe", "entail_safe", "total"}
    assert terms["total"].item() == pytest.approx(2 * terms["contrastive_safe"].item() + 0.5 * terms["entail_safe"].item(), rel=1e-6)


def test_missing_modality_skips_its_terms_and_bad_names_fail():
    t, v = H.expmap0(torch.randn(3, 2), 1.0), H.expmap0(torch.randn(3, 2), 1.0)
    terms = hysac_objective(safe_text=t, safe_image=v, unsafe_text=None, unsafe_image=None, curv=1.0, logit_scale=0.0,
                            weights=authors_weights())
    assert set(terms) == {"contrastive_safe", "entail_safe", "total"}
    with pytest.raises(ValueError, match="unknown HySAC loss term"):
        hysac_objective(safe_text=t, safe_image=v, unsafe_text=None, unsafe_image=None, curv=1.0, logit_scale=0.0,
                        weights={"contrastive": 1.0})
