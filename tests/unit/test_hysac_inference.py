"""HySAC inference pieces: bounds, batched traversal (authors' rule and geodesic), allowed access, NSFW classifier."""

import math

import pytest
import torch

from safeclip import hyperbolic as H
from safeclip.hysac.classifier import auroc, choose_threshold, classify, nsfw_classification, rates
from safeclip.hysac.traversal import (
    allowed_access,
    authors_threshold,
    compute_bounds,
    traverse,
    traverse_queries,
)


def at_radii(radii, dim=4, seed=0, curv=1.0):
    """Hyperboloid points in random directions at the given root distances (expmap0 keeps lengths)."""
    torch.manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(len(radii), dim, dtype=torch.float64), dim=-1)
    return H.expmap0(directions * torch.tensor(radii, dtype=torch.float64)[:, None], curv)


def test_authors_threshold_by_hand():
    """B = 1, c = 1, alpha = 0.8: B' = 1 + tanh(0.2) + 1; c = 2 divides by 2 (not sqrt 2)."""
    assert authors_threshold(1.0, 1.0) == pytest.approx(2 + math.tanh(0.2))
    assert authors_threshold(1.0, 2.0) == pytest.approx(2 + math.tanh(0.1))


def test_traversal_authors_rule_sets_the_euclidean_norm():
    """A far point ends with ||x|| = B' (root distance asinh(B')); a near point is unchanged."""
    bound, curv = 1.0, 1.0
    threshold = authors_threshold(bound, curv)
    points = at_radii([0.5, threshold + 1.0])
    moved = traverse(points, bound, curv, rule="authors")
    torch.testing.assert_close(moved[0], points[0])
    assert moved[1].norm().item() == pytest.approx(threshold)
    assert H.origin_distance(moved[1], curv).item() == pytest.approx(math.asinh(threshold))
    cosine = torch.nn.functional.cosine_similarity(moved[1], points[1], dim=0).item()
    assert cosine == pytest.approx(1.0)  # same direction


def test_traversal_geodesic_rule_sets_the_root_distance():
    bound, curv = 1.5, 2.0
    threshold = authors_threshold(bound, curv)
    moved = traverse(at_radii([threshold + 3.0], curv=curv), bound, curv, rule="geodesic")
    assert H.origin_distance(moved, curv).item() == pytest.approx(threshold)


@pytest.mark.parametrize("rule", ["authors", "geodesic"])
def test_batch_traversal_equals_one_at_a_time(rule):
    radii = [0.2, 1.0, 2.5, 3.0, 4.5, 7.0, 2.9]
    points = at_radii(radii, seed=3)
    batch = traverse(points, 1.2, 1.3, rule=rule)
    single = torch.cat([traverse(points[i : i + 1], 1.2, 1.3, rule=rule) for i in range(len(radii))])
    torch.testing.assert_close(batch, single, rtol=0, atol=0)
    assert not torch.equal(batch, points)  # some rows moved
    assert torch.equal(batch[0], points[0])  # the nearest did not


def test_allowed_access_pushes_near_queries_out_and_keeps_far_ones():
    bound, curv = 1.0, 1.0
    threshold = authors_threshold(bound, curv)
    points = at_radii([0.3, threshold + 2])
    moved = allowed_access(points, bound, curv, rule="geodesic")
    assert H.origin_distance(moved[0], curv).item() == pytest.approx(threshold)
    torch.testing.assert_close(moved[1], points[1])


def test_compute_bounds_percentiles_by_hand():
    """Root distances 1..100: up_95 = 95.05 and low_05 = 5.95 (linear interpolation), avg 50.5."""
    radii = [float(r) / 10 for r in range(1, 101)]  # 0.1 .. 10 (sinh stays moderate)
    bounds = compute_bounds({"safe_text": at_radii(radii), "unsafe_image": at_radii(radii[::-1], seed=1)}, 1.0)
    assert set(bounds) == {"S", "G"}
    assert bounds["S"]["up_95"] == pytest.approx(9.505, rel=1e-6)
    assert bounds["S"]["low_05"] == pytest.approx(0.595, rel=1e-6)
    assert bounds["S"]["avg"] == pytest.approx(5.05, rel=1e-6)
    assert bounds["G"] == pytest.approx(bounds["S"])


def test_traverse_queries_names_a_missing_bound():
    with pytest.raises(ValueError, match="needs the V bound"):
        traverse_queries(at_radii([1.0]), "text", {"S": {"up_95": 1.0}}, 1.0)


def naive_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg)) * 100


def test_auroc_matches_pairwise_count_with_ties():
    torch.manual_seed(0)
    scores = torch.randint(0, 5, (40,)).double()
    labels = torch.randint(0, 2, (40,))
    assert auroc(scores, labels) == pytest.approx(naive_auroc(scores.tolist(), labels.tolist()))
    assert auroc(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 0, 1])) == pytest.approx(100.0)


def test_rates_by_hand():
    """Scores 1, 2, 3, 4 with labels 0, 1, 0, 1 and threshold 2.5: predictions 0, 0, 1, 1 -> one FP, one FN."""
    out = rates(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 1, 0, 1]), 2.5)
    assert out == {"accuracy": 50.0, "FPR": 50.0, "FNR": 50.0}


def test_threshold_from_validation_separates_and_transfers():
    val_scores, val_labels = torch.tensor([0.1, 0.3, 0.35, 0.8, 0.9]), torch.tensor([0, 0, 0, 1, 1])
    threshold = choose_threshold(val_scores, val_labels)
    assert threshold == pytest.approx((0.35 + 0.8) / 2)  # the only midpoint with 100% validation accuracy
    out = classify(val_scores, val_labels, torch.tensor([0.2, 0.5, 0.6, 1.0]), torch.tensor([0, 0, 0, 1]))
    assert out == pytest.approx({"accuracy": 75.0, "FPR": 100 / 3, "FNR": 0.0, "AUROC": 100.0, "threshold": threshold})


def test_nsfw_classification_by_radius_and_by_prototype():
    """Unsafe items farther out (HySAC's picture): root distance separates them; the Euclidean baseline
    separates items whose unsafe ones share a direction."""
    val = {"safe_text": at_radii([0.5] * 8, seed=1), "unsafe_text": at_radii([2.0] * 8, seed=2),
           "safe_image": at_radii([0.7] * 8, seed=3), "unsafe_image": at_radii([2.5] * 8, seed=4)}
    test = {k: v.flip(0) * 1.0 for k, v in val.items()}
    out = nsfw_classification(val, test, curv=1.0)
    assert set(out) == {"text", "image"}
    assert out["text"]["accuracy"] == 100.0 and out["image"]["AUROC"] == 100.0
    direction = torch.zeros(4, dtype=torch.float64)
    direction[0] = 1.0
    euclid_val = {"safe_text": torch.randn(8, 4, dtype=torch.float64) - 3 * direction,
                  "unsafe_text": torch.randn(8, 4, dtype=torch.float64) * 0.1 + 3 * direction}
    baseline = nsfw_classification(euclid_val, euclid_val)
    assert baseline["text"]["accuracy"] == 100.0 and "image" not in baseline
