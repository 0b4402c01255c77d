"""Retrieval metrics and the Safe-CLIP / HySAC protocol (``safeclip.eval.retrieval``).

Run: ``python -m pytest tests/unit/test_retrieval.py -q``. Fast metrics are checked against a naive
full-argsort implementation and on tiny hand-made embeddings whose answers are derived in docstrings.
"""

import json
import math

import pytest
import torch

from safeclip.eval import format_markdown_table, recall_at_k, safe_clip_protocol, target_ranks, top1, write_results

# ----------------------------------------------------------------------------- naive reference


def naive_ranks(queries, gallery, targets):
    """Position of each target in a full descending argsort of float64 cosine similarities."""
    q = torch.nn.functional.normalize(queries.double(), dim=1)
    g = torch.nn.functional.normalize(gallery.double(), dim=1)
    order = (q @ g.T).argsort(dim=1, descending=True)  # (Q, G)
    return (order == targets[:, None]).nonzero()[:, 1]  # (Q,) one match per row


def naive_recall(queries, gallery, targets, ks):
    ranks = naive_ranks(queries, gallery, targets)
    return {k: 100.0 * sum(int(r) < k for r in ranks) / len(ranks) for k in ks}


def random_case(n_queries, n_gallery, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(n_queries, dim, generator=gen) * 3
    gallery = torch.randn(n_gallery, dim, generator=gen) * 0.5
    targets = torch.randint(0, n_gallery, (n_queries,), generator=gen)
    return queries, gallery, targets


KS = (1, 2, 5, 10, 20, 1000)  # 1000 > every gallery: always 100 %


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 32, 50, 64, 1024])
def test_recall_matches_naive_for_every_chunk_size(chunk_size):
    """Q = G = 50: chunks of 1, non-divisors (3, 7, 32), exactly Q, and larger than Q."""
    queries, gallery, targets = random_case(50, 50, seed=1)
    got = recall_at_k(queries, gallery, targets, KS, chunk_size=chunk_size)
    assert got == pytest.approx(naive_recall(queries, gallery, targets, KS))
    assert list(got) == list(KS) and got[1000] == 100.0
    assert torch.equal(target_ranks(queries, gallery, targets, chunk_size=chunk_size),
                       naive_ranks(queries, gallery, targets))


@pytest.mark.parametrize("n_queries,n_gallery,chunk_size", [(37, 83, 10), (90, 20, 16), (5, 400, 2)])
def test_recall_matches_naive_rectangular(n_queries, n_gallery, chunk_size):
    """Q != G in both directions; several queries may share a target (as with 5 captions per image)."""
    queries, gallery, targets = random_case(n_queries, n_gallery, seed=n_queries)
    assert recall_at_k(queries, gallery, targets, KS, chunk_size=chunk_size) == pytest.approx(
        naive_recall(queries, gallery, targets, KS))


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_top1_matches_naive_argmax(chunk_size):
    queries, gallery, _ = random_case(23, 31, seed=3)
    sims = torch.nn.functional.normalize(queries.double(), dim=1) @ torch.nn.functional.normalize(gallery.double(), dim=1).T
    got = top1(queries, gallery, chunk_size)
    assert got.dtype == torch.long and got.shape == (23,)
    assert torch.equal(got, sims.argmax(dim=1))


# ----------------------------------------------------------------------------- by hand

# Gallery g0 = (1, 0), g1 = (0, 1), g2 = (1, 1)/sqrt(2).
HAND_GALLERY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
HAND_QUERIES = torch.tensor([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.2]])
HAND_TARGETS = torch.tensor([2, 1, 0])


def test_recall_by_hand():
    """Cosines (rows: queries, columns g0 g1 g2) and the target's 0-based rank:

    q0 = (1, 0.1):  0.995  0.0995  0.774 -> order g0 g2 g1; target g2 -> rank 1
    q1 = (0, 1):    0      1       0.707 -> order g1 g2 g0; target g1 -> rank 0
    q2 = (-1, 0.2): -0.981 0.196  -0.555 -> order g1 g2 g0; target g0 -> rank 2
    R@1 = 1/3, R@2 = 2/3, R@3 = 3/3.  top-1 = (g0, g1, g1).
    """
    got = recall_at_k(HAND_QUERIES, HAND_GALLERY, HAND_TARGETS, ks=(1, 2, 3))
    assert got == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    assert target_ranks(HAND_QUERIES, HAND_GALLERY, HAND_TARGETS).tolist() == [1, 0, 2]
    assert top1(HAND_QUERIES, HAND_GALLERY).tolist() == [0, 1, 1]


def test_cosine_is_scale_invariant():
    """Rescaling rows changes dot products but not cosines, so nothing changes.

    The scales are chosen so a dot product would flip the answer: with g1 scaled by 100, q0 . g1 =
    0.1 * 100 = 10 > q0 . g0 = 3, so a dot-product top-1 for q0 would be g1; cosine keeps g0.
    """
    queries = HAND_QUERIES * torch.tensor([[5.0], [0.01], [100.0]])
    gallery = HAND_GALLERY * torch.tensor([[3.0], [100.0], [0.2]])
    assert recall_at_k(queries, gallery, HAND_TARGETS, ks=(1, 2, 3)) == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    assert top1(queries, gallery).tolist() == [0, 1, 1]
    assert (queries @ gallery.T).argmax(dim=1).tolist()[0] == 1  # the dot product would disagree


def test_ties_favour_the_target_and_the_lowest_index():
    """Query (1, 0); gallery g0 = (1, 0), g1 = (2, 0), g2 = (0, 1). g0 and g1 both have cosine 1.

    Target g1: nothing is strictly more similar -> rank 0, R@1 = 100. top-1 = g0 (lowest index).
    Target g2: two items strictly above -> rank 2, R@2 = 0, R@3 = 100.
    """
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert recall_at_k(query, gallery, torch.tensor([1]), ks=(1,)) == {1: 100.0}
    assert top1(query, gallery).tolist() == [0]
    assert recall_at_k(query, gallery, torch.tensor([2]), ks=(2, 3)) == {2: 0.0, 3: 100.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_scored_in_float32(dtype):
    """Half inputs give the hand-checked answer, and agree with the naive reference on the same values."""
    got = recall_at_k(HAND_QUERIES.to(dtype), HAND_GALLERY.to(dtype), HAND_TARGETS, ks=(1, 2, 3))
    assert got == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    queries, gallery, targets = random_case(40, 60, seed=7)
    queries, gallery = queries.to(dtype), gallery.to(dtype)
    assert recall_at_k(queries, gallery, targets, KS, chunk_size=9) == pytest.approx(
        naive_recall(queries.float(), gallery.float(), targets, KS))


def test_inputs_needing_grad_give_plain_floats():
    queries = HAND_QUERIES.clone().requires_grad_()
    got = recall_at_k(queries, HAND_GALLERY, HAND_TARGETS.int(), ks=(1,))
    assert type(got[1]) is float and abs(got[1] - 100 / 3) < 1e-9


@pytest.mark.parametrize("bad", [
    dict(queries=torch.tensor([[float("nan"), 1.0]])),
    dict(gallery=torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])),  # zero row: cosine undefined
    dict(targets=torch.tensor([0, 1, 3])),  # out of range
    dict(targets=torch.tensor([0, 1])),  # wrong length
    dict(targets=torch.tensor([0.0, 1.0, 2.0])),  # not indices
    dict(gallery=torch.ones(3, 5)),  # dimension mismatch
    dict(queries=torch.empty(0, 2), targets=torch.empty(0, dtype=torch.long)),
    dict(ks=(0,)),
    dict(chunk_size=0),
])
def test_bad_inputs_raise(bad):
    """NaN or zero embeddings would otherwise tie with everything and count as hits."""
    args = dict(queries=HAND_QUERIES, gallery=HAND_GALLERY, targets=HAND_TARGETS, ks=(1,), chunk_size=2) | bad
    with pytest.raises(ValueError):
        recall_at_k(args["queries"], args["gallery"], args["targets"], args["ks"], chunk_size=args["chunk_size"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_matches_cpu():
    queries, gallery, targets = random_case(300, 500, seed=11)
    queries, gallery = queries.bfloat16(), gallery.bfloat16()
    expected = recall_at_k(queries, gallery, targets, KS, chunk_size=64)
    got = recall_at_k(queries.cuda(), gallery, targets, KS, chunk_size=64)  # gallery and targets follow
    assert got == pytest.approx(expected, abs=100 / 300 + 1e-6)  # at most one near-tie may flip
    assert top1(queries.cuda(), gallery.cuda()).device.type == "cuda"


# ----------------------------------------------------------------------------- the protocol


def basis(rows, dim=8):
    return torch.eye(dim)[list(rows)]


def test_protocol_unsafe_aligned_with_unsafe_gives_nsfw_100():
    """CLIP-like failure: t*_i = v*_i = e_{i+3}; safe pairs t_i = v_i = e_i (N = 3).

    T->V, V->T: every item matches itself with cosine 1, the rest 0 -> R@1 = 100.
    T*->V+V*: query e_{i+3} has cosine 1 with v*_i (index i+3 >= N: unsafe top-1) and 0 with the
    target v_i and the other four items -> rank 1: R@1 = 0, R@5 = 100, NSFW@1 = 100.
    V*->T+T*: the same with texts.
    """
    t, v, t_star, v_star = basis([0, 1, 2]), basis([0, 1, 2]), basis([3, 4, 5]), basis([3, 4, 5])
    res = safe_clip_protocol(t, v, t_star, v_star)
    assert list(res) == ["T->V", "V->T", "T*->V+V*", "V*->T+T*"]
    for direction in ("T->V", "V->T"):
        assert res[direction] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "R@20": 100.0}
    for direction in ("T*->V+V*", "V*->T+T*"):
        assert res[direction] == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0, "R@20": 100.0, "NSFW@1": 100.0}
    assert all(type(x) is float for entry in res.values() for x in entry.values())


def test_protocol_directions_use_their_own_galleries():
    """Redirected texts but unredirected images (N = 3): t_i = v_i = e_i, v*_i = e_{i+3},
    t*_i = e_i + 0.5 e_{i+3}.

    T*->V+V*: cos(t*_i, v_i) = 1/sqrt(1.25) = 0.894 > cos(t*_i, v*_i) = 0.447 > 0 (others)
      -> target first: R@1 = 100, NSFW@1 = 0.
    V*->T+T*: cos(v*_i, t*_i) = 0.447 > cos(v*_i, t_i) = 0 = the other four
      -> top-1 unsafe, target rank 1: R@1 = 0, R@5 = 100, NSFW@1 = 100.
    """
    t, v, v_star = basis([0, 1, 2]), basis([0, 1, 2]), basis([3, 4, 5])
    t_star = t + 0.5 * v_star
    res = safe_clip_protocol(t, v, t_star, v_star, ks=(1, 5))
    assert res["T*->V+V*"] == {"R@1": 100.0, "R@5": 100.0, "NSFW@1": 0.0}
    assert res["V*->T+T*"] == {"R@1": 0.0, "R@5": 100.0, "NSFW@1": 100.0}


def test_protocol_nsfw_rate_counts_queries():
    """N = 4: t_i = v_i = e_i, v*_i = e_{i+4};
    t*_0,1 = e_i + 2 e_{i+4} (nearer its unsafe image), t*_2,3 = 2 e_i + e_{i+4} (nearer its safe one).

    T*->V+V*: queries 0, 1 rank v*_i first (cos 0.894) then the target v_i (0.447): rank 1, unsafe top-1;
    queries 2, 3 rank the target first. -> R@1 = 50, R@2 = 100, NSFW@1 = 50.
    """
    t, v, v_star = basis(range(4)), basis(range(4)), basis(range(4, 8))
    weights = torch.tensor([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 1.0]])
    t_star = weights[:, :1] * t + weights[:, 1:] * v_star
    res = safe_clip_protocol(t, v, t_star, v_star, ks=(1, 2))
    assert res["T*->V+V*"] == {"R@1": 50.0, "R@2": 100.0, "NSFW@1": 50.0}


def test_protocol_matches_recall_on_concatenated_gallery():
    """On random quadruplets each entry equals the naive recall on the gallery the protocol names."""
    gen = torch.Generator().manual_seed(5)
    t, v, t_star, v_star = (torch.randn(30, 12, generator=gen) for _ in range(4))
    res = safe_clip_protocol(t, v, t_star, v_star, ks=(1, 5, 10), chunk_size=7)
    idx = torch.arange(30)
    assert res["T->V"] == pytest.approx({f"R@{k}": x for k, x in naive_recall(t, v, idx, (1, 5, 10)).items()})
    assert res["V->T"] == pytest.approx({f"R@{k}": x for k, x in naive_recall(v, t, idx, (1, 5, 10)).items()})
    for name, queries, safe, unsafe in (("T*->V+V*", t_star, v, v_star), ("V*->T+T*", v_star, t, t_star)):
        gallery = torch.cat([safe, unsafe])
        expected = {f"R@{k}": x for k, x in naive_recall(queries, gallery, idx, (1, 5, 10)).items()}
        expected["NSFW@1"] = 100.0 * float((top1(queries, gallery) >= 30).float().mean())
        assert res[name] == pytest.approx(expected)


def test_protocol_omits_unsafe_entries_without_both_unsafe_inputs():
    t, v = basis([0, 1, 2]), basis([0, 1, 2])
    assert list(safe_clip_protocol(t, v)) == ["T->V", "V->T"]
    with pytest.warns(UserWarning, match="omitted"):
        assert list(safe_clip_protocol(t, v, unsafe_text=basis([3, 4, 5]))) == ["T->V", "V->T"]
    with pytest.warns(UserWarning, match="omitted"):
        assert list(safe_clip_protocol(t, v, unsafe_image=basis([3, 4, 5]))) == ["T->V", "V->T"]


def test_protocol_rejects_misaligned_quadruplets():
    with pytest.raises(ValueError, match="aligned"):
        safe_clip_protocol(basis([0, 1, 2]), basis([0, 1]))


# ----------------------------------------------------------------------------- reporting

MODELS = {
    "clip": safe_clip_protocol(basis([0, 1, 2]), basis([0, 1, 2]), basis([3, 4, 5]), basis([3, 4, 5])),
    "safe-clip": {"T->V": {"R@1": 100 / 3, "R@5": 66.66, "R@10": 80.0, "R@20": 90.0}},
}


def test_markdown_table_layout():
    table = format_markdown_table(MODELS, protocol="safe-clip")
    lines = table.splitlines()
    assert "protocol: safe-clip" in lines[0] and "Table 2" in lines[0]
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:5] == ["model", "T->V R@1", "T->V R@5", "T->V R@10", "T->V R@20"]
    assert "T*->V+V* NSFW@1" in header and "V*->T+T* NSFW@1" in header and len(header) == 1 + 4 + 4 + 5 + 5
    assert set(lines[3]) <= set("|-:")
    clip_row = [c.strip() for c in lines[4].strip("|").split("|")]
    assert clip_row[0] == "clip" and clip_row[1] == "100.0"
    safe_row = [c.strip() for c in lines[5].strip("|").split("|")]
    assert safe_row[:5] == ["safe-clip", "33.3", "66.7", "80.0", "90.0"] and set(safe_row[5:]) == {"-"}


def test_write_results_json_and_markdown(tmp_path):
    out = tmp_path / "res"
    (out).mkdir()
    (out / "results.json").write_text("stale")
    json_path, md_path = write_results(MODELS, out, protocol="safe-clip", stem="results")
    assert (json_path, md_path) == (out / "results.json", out / "results.md")
    data = json.loads(json_path.read_text())
    assert data == {"protocol": "safe-clip", "models": json.loads(json.dumps(MODELS))}
    assert json_path.read_text().startswith('{\n  "protocol": "safe-clip",\n  "models": {')  # indent 2
    assert not math.isnan(data["models"]["clip"]["T*->V+V*"]["NSFW@1"])
    md = md_path.read_text()
    assert "| clip |" in md and "| safe-clip |" in md and "protocol: safe-clip" in md
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # no temp files left
