"""HySAC's protocols: Lorentz ranking equals distance ranking, traversal redirects, allowed access keeps unsafe pairs."""

import torch

from safeclip import hyperbolic as H
from safeclip.eval.allowed_access import allowed_access_protocol
from safeclip.eval.retrieval import recall_at_k
from safeclip.hysac.evaluate import hysac_metrics, lorentz_similarity
from safeclip.hysac.traversal import compute_bounds


def naive_recall_by_distance(queries, gallery, curv, k):
    d = H.pairwise_distance(queries.double(), gallery.double(), curv, eps=0.0)
    ranks = (d < d.diagonal()[:, None]).sum(dim=1)  # strictly closer items
    return float((ranks < k).double().mean() * 100)


def test_lorentz_similarity_ranks_as_distance():
    torch.manual_seed(0)
    q = H.expmap0(torch.randn(30, 5) * 1.5, 1.3)
    g = H.expmap0(torch.randn(30, 5) * 1.5, 1.3)
    recalls = recall_at_k(q, g, torch.arange(30), (1, 5), similarity=lorentz_similarity(1.3))
    assert recalls[1] == naive_recall_by_distance(q, g, 1.3, 1)
    assert recalls[5] == naive_recall_by_distance(q, g, 1.3, 5)


def world(n=12, seed=0):
    """Safe items near the origin, unsafe ones farther out along the same directions (HySAC's picture):
    t_i, v_i at radius 0.5 in direction u_i (texts and images slightly apart), t*_i, v*_i at radius 3."""
    torch.manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n, 6, dtype=torch.float64), dim=-1)
    noise = lambda: torch.randn(n, 6, dtype=torch.float64) * 0.02  # noqa: E731
    tangent = {"safe_text": u * 0.5 + noise(), "safe_image": u * 0.5 + noise(),
               "unsafe_text": u * 3.0 + noise(), "unsafe_image": u * 3.0 + noise()}
    return {k: H.expmap0(v, 1.0) for k, v in tangent.items()}


def test_traversal_redirects_unsafe_queries_to_safe_items():
    emb = world()
    bounds = compute_bounds(emb, 1.0)
    plain = hysac_metrics(emb, curv=1.0, bounds=bounds)
    moved = hysac_metrics(emb, curv=1.0, bounds=bounds, traversal="geodesic")
    assert plain["T->V"]["R@1"] == moved["T->V"]["R@1"] == 100.0  # safe queries are inside the bound
    assert plain["T*->V+V*"]["NSFW@1"] == 100.0  # without traversal t* finds v*
    assert moved["T*->V+V*"]["NSFW@1"] == 0.0 and moved["T*->V+V*"]["R@1"] == 100.0
    assert moved["V*->T+T*"]["NSFW@1"] == 0.0
    assert moved["safer_t2v"]["R@1"] == 100.0
    assert plain["allowed"]["T*->V* R@1"] == 100.0 and plain["allowed"]["T*->V*+V safe@1"] == 0.0


def test_allowed_access_table_by_hand():
    """Two quadruplets on orthogonal axes; unsafe items are pairs of their own: every allowed direction is R@1 100."""
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    ts = torch.tensor([[1.0, 0.3], [0.3, -1.0]])
    vs = torch.tensor([[1.0, 0.35], [0.35, -1.0]])
    out = allowed_access_protocol(t, v, ts, vs, ks=(1,))
    assert out["T*->V*"] == {"R@1": 100.0} and out["V*->T*"] == {"R@1": 100.0}
    assert out["T*->V*+V"] == {"R@1": 100.0, "safe@1": 0.0}
    # swap the unsafe images: each t* now prefers the other v*; its safe image v_0 wins for query 0
    out = allowed_access_protocol(t, v, ts, vs.flip(0), ks=(1,))
    assert out["T*->V*"]["R@1"] == 0.0
