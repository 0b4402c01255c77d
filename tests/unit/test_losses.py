"""Hand-checkable tests of the Safe-CLIP loss terms (paper Eq. 4-7)."""

import math

import pytest
import torch

from safeclip.losses import (
    preservation_contrastive_loss,
    preservation_cosine_loss,
    redirection_contrastive_loss,
    redirection_cosine_loss,
    safe_clip_objective,
    symmetric_info_nce,
)

E1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
E1_SCALED = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # same directions, other norms


def test_info_nce_orthogonal_pairs_by_hand():
    """Two orthogonal pairs, tau=1: each row softmax is [e^1, e^0] -> CE = log(1 + e^-1); rows + columns."""
    expected = 2 * math.log(1 + math.exp(-1))
    assert symmetric_info_nce(E1, E1_SCALED, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_not_symmetric_in_batch_when_asymmetric():
    """Row and column CEs differ for a non-symmetric similarity matrix; we sum both (Eq. 4 has two sums)."""
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]])  # cos(a_i, b_j)
    rows = -torch.log_softmax(s, 1).diagonal().mean()
    cols = -torch.log_softmax(s, 0).diagonal().mean()
    assert symmetric_info_nce(a, b, 1.0).item() == pytest.approx((rows + cols).item(), rel=1e-6)
    assert rows.item() != pytest.approx(cols.item())


def test_redirection_contrastive_is_four_mean_cross_entropies():
    """Eq. 4 with both modalities = twice the two-CE value when both pairs are orthogonal (tau = 0.5)."""
    half = 2 * math.log(1 + math.exp(-2))
    loss = redirection_contrastive_loss(
        unsafe_text=E1, safe_image_ref=E1_SCALED, unsafe_image=E1_SCALED, safe_text_ref=E1, temperature=0.5
    )
    assert loss.item() == pytest.approx(2 * half, rel=1e-6)


def test_redirection_contrastive_text_only_mode():
    loss = redirection_contrastive_loss(
        unsafe_text=E1, safe_image_ref=E1, unsafe_image=None, safe_text_ref=None, temperature=1.0
    )
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)


def test_redirection_cosine_by_hand():
    """cos = 1 for the text pair, cos = 0 for both image pairs -> -(1 + 0) = -1."""
    t_star = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    t0 = torch.tensor([[3.0, 3.0], [1.0, 0.0]])
    v_star = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v0 = torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    loss = redirection_cosine_loss(unsafe_text=t_star, safe_text_ref=t0, unsafe_image=v_star, safe_image_ref=v0)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)


def test_preservation_cosine_by_hand_and_minimum():
    """Identical directions on both sides give the minimum -2; opposite text gives -(-1 + 1) = 0."""
    x = torch.randn(5, 8)
    y = torch.randn(5, 8)
    assert preservation_cosine_loss(safe_text=x, safe_text_ref=2 * x, safe_image=y, safe_image_ref=y).item() == pytest.approx(-2.0, abs=1e-6)
    assert preservation_cosine_loss(safe_text=-x, safe_text_ref=x, safe_image=y, safe_image_ref=y).item() == pytest.approx(0.0, abs=1e-6)


def test_preservation_contrastive_matches_explicit_sums():
    """Eq. 7 written as four explicit sums over log-softmaxes equals the function."""
    torch.manual_seed(0)
    t, v0, v, t0 = (torch.randn(4, 6) for _ in range(4))
    tau = 0.07
    cos = lambda a, b: torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
    s1 = cos(v0, t) / tau  # s1[i, j] = cos(V0(v_i), T(t_j))
    s2 = cos(t0, v) / tau  # s2[i, j] = cos(T0(t_i), V(v_j))
    expected = -(
        torch.log_softmax(s1, 1).diagonal().mean()
        + torch.log_softmax(s1, 0).diagonal().mean()
        + torch.log_softmax(s2, 1).diagonal().mean()
        + torch.log_softmax(s2, 0).diagonal().mean()
    )
    got = preservation_contrastive_loss(safe_text=t, safe_image_ref=v0, safe_image=v, safe_text_ref=t0, temperature=tau)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_losses_reject_all_missing():
    with pytest.raises(ValueError, match="every input pair is None"):
        redirection_cosine_loss(unsafe_text=None, safe_text_ref=E1, unsafe_image=None, safe_image_ref=E1)


def test_objective_weighted_sum_and_skips_missing_modalities():
    """Text-only inputs, weights (0.5, 2, 1, 0): each term and the total written out from the equations.

    Without images only the text halves exist: Eq. 4 = CE rows + CE columns of cos(T(t*), V0(v)) / tau,
    Eq. 5 = -mean cos(T(t*), T0(t)), Eq. 6 = -mean cos(T(t), T0(t)); Eq. 7 has weight 0 and is skipped.
    """
    torch.manual_seed(1)
    t, ts, t0, v0 = (torch.randn(3, 4) for _ in range(4))
    weights = {"redirection_contrastive": 0.5, "redirection_cosine": 2.0, "preservation_cosine": 1.0, "preservation_contrastive": 0.0}
    terms = safe_clip_objective(
        safe_text=t, unsafe_text=ts, safe_image=None, unsafe_image=None,
        safe_text_ref=t0, safe_image_ref=v0, weights=weights, temperature=0.1,
    )
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    logits = unit(ts) @ unit(v0).T / 0.1  # (3, 3): rows T(t*_i), columns V0(v_j)
    eq4 = -(torch.log_softmax(logits, 1).diagonal().mean() + torch.log_softmax(logits, 0).diagonal().mean())
    eq5 = -(unit(ts) * unit(t0)).sum(1).mean()
    eq6 = -(unit(t) * unit(t0)).sum(1).mean()
    assert set(terms) == {"redirection_contrastive", "redirection_cosine", "preservation_cosine", "total",
                          "redirection_contrastive_text", "redirection_cosine_text", "preservation_cosine_text"}
    assert terms["redirection_contrastive"].item() == pytest.approx(eq4.item(), rel=1e-5)
    assert terms["redirection_cosine"].item() == pytest.approx(eq5.item(), rel=1e-5)
    assert terms["preservation_cosine"].item() == pytest.approx(eq6.item(), rel=1e-5)
    assert terms["total"].item() == pytest.approx((0.5 * eq4 + 2.0 * eq5 + 1.0 * eq6).item(), rel=1e-5)


def test_gradients_flow_only_to_trainable_side():
    a = torch.randn(4, 8, requires_grad=True)
    ref = torch.randn(4, 8)
    redirection_contrastive_loss(unsafe_text=a, safe_image_ref=ref, unsafe_image=None, safe_text_ref=None).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- issue 16 items 3-5

from pathlib import Path  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from safeclip.config import LOSS_HALF_NAMES, LOSS_TERM_NAMES, load_config  # noqa: E402
from safeclip.losses import LOSS_HALVES, LOSS_TERMS  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_WEIGHTS = {"redirection_contrastive": 0.375, "redirection_cosine": 0.15, "preservation_cosine": 0.1,
                 "preservation_contrastive": 0.25}


def quadruplet_embeddings(n: int = 8, d: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    names = ("safe_text", "unsafe_text", "safe_image", "unsafe_image", "safe_text_ref", "safe_image_ref")
    return {name: torch.randn(n, d, generator=generator) for name in names}


def test_config_and_losses_name_the_same_terms_and_halves():
    assert LOSS_TERM_NAMES == LOSS_TERMS and set(LOSS_HALF_NAMES) == set(LOSS_HALVES)


def test_a_batch_size_mismatch_raises_instead_of_dropping_the_term():
    """Issue 16.3: torch's batch-size ValueError used to be swallowed and the term silently left out of the total."""
    emb = quadruplet_embeddings()
    emb["unsafe_text"] = emb["unsafe_text"][:6]  # (6, D) against (8, D) references
    weights = {**PAPER_WEIGHTS, "redirection_cosine": 0.0}  # Eq. 4 is the only term that reads T(t*)
    with pytest.raises(ValueError, match=r"redirection_contrastive_text: unsafe_text has shape \(6, 16\)"):
        safe_clip_objective(**emb, weights=weights, temperature=0.01)


def test_a_broadcastable_cosine_pair_is_refused():
    """cos((N, D), (1, D)) broadcasts silently in torch; a half checks its shapes."""
    emb = quadruplet_embeddings()
    emb["safe_text_ref"] = emb["safe_text_ref"][:1]
    with pytest.raises(ValueError, match="safe_text_ref"):
        preservation_cosine_loss(safe_text=emb["safe_text"], safe_text_ref=emb["safe_text_ref"], safe_image=None,
                                 safe_image_ref=None)


def test_other_errors_pass_through():
    emb = quadruplet_embeddings()
    with pytest.raises(TypeError):
        safe_clip_objective(**emb, weights=PAPER_WEIGHTS, temperature="0.01")  # a str temperature


def test_halves_are_chosen_from_the_inputs_given():
    """Text-only data (ViSU-Text): only the halves whose two inputs are texts are computed."""
    emb = quadruplet_embeddings()
    emb.update(safe_image=None, unsafe_image=None, safe_image_ref=None)
    terms = safe_clip_objective(**emb, weights=PAPER_WEIGHTS, temperature=0.01)
    assert set(terms) == {"redirection_cosine_text", "preservation_cosine_text", "redirection_cosine",
                          "preservation_cosine", "total"}
    expected = 0.15 * terms["redirection_cosine_text"] + 0.1 * terms["preservation_cosine_text"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_default_grouping_equals_the_four_paper_terms():
    emb = quadruplet_embeddings()
    terms = safe_clip_objective(**emb, weights=PAPER_WEIGHTS, temperature=0.01)
    expected = (0.375 * redirection_contrastive_loss(emb["unsafe_text"], emb["safe_image_ref"], emb["unsafe_image"], emb["safe_text_ref"])
                + 0.15 * redirection_cosine_loss(emb["unsafe_text"], emb["safe_text_ref"], emb["unsafe_image"], emb["safe_image_ref"])
                + 0.1 * preservation_cosine_loss(emb["safe_text"], emb["safe_text_ref"], emb["safe_image"], emb["safe_image_ref"])
                + 0.25 * preservation_contrastive_loss(emb["safe_text"], emb["safe_image_ref"], emb["safe_image"], emb["safe_text_ref"]))
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert load_config(None).loss.weights() == PAPER_WEIGHTS


def authors_total(T_t, T_ts, V_v, V_vs, T0_t, V0_v):
    """The authors' training loss as their launch script and loss code compute it (github aimagelab/safe-clip)."""
    lambdas = [0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5]
    lambdas = [lam / sum(lambdas) / 8 for lam in lambdas]

    def cosine(a, b):
        return (1 - F.cosine_similarity(a, b, dim=-1)).mean()

    def contrastive(a, b):
        logits = 100.0 * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
        labels = torch.arange(a.shape[0])
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    losses = [cosine(T_t, T0_t), cosine(T_ts, T0_t), cosine(V_v, V0_v), cosine(V_vs, V0_v),
              contrastive(T_t, V0_v), contrastive(T_ts, V0_v), contrastive(T0_t, V_v), contrastive(T0_t, V_vs)]
    return sum(lam * loss for lam, loss in zip(lambdas, losses))


def objective_from_config(cfg, emb):
    return safe_clip_objective(**emb, weights=cfg.loss.weights(), temperature=cfg.loss.temperature,
                               info_nce_scale=cfg.loss.info_nce_scale, cosine_form=cfg.loss.cosine_form)


def test_authors_recipe_gives_the_authors_total():
    """Issue 16.4: configs/vit-l-14_safe-clip-authors.yaml reproduces the authors' weighting exactly."""
    cfg = load_config(CONFIGS / "vit-l-14_safe-clip-authors.yaml")
    emb = quadruplet_embeddings()
    ours = objective_from_config(cfg, emb)["total"]
    theirs = authors_total(emb["safe_text"], emb["unsafe_text"], emb["safe_image"], emb["unsafe_image"],
                           emb["safe_text_ref"], emb["safe_image_ref"])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    # the paper grouping is a different objective: Eq. 4's text half weighs 3x, Eq. 7 2x theirs (relative to Eq. 6)
    assert objective_from_config(load_config(CONFIGS / "vit-l-14_safe-clip.yaml"), emb)["total"].item() != pytest.approx(theirs.item(), rel=1e-2)


def test_objective_runs_in_float32_under_bf16_autocast():
    """Issue 16.5: under autocast the cosine matrix ran in bf16; /0.01 that is ~0.1 of noise per logit."""
    emb = quadruplet_embeddings(n=32, d=64, seed=3)
    exact = safe_clip_objective(**emb, weights=PAPER_WEIGHTS, temperature=0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = safe_clip_objective(**emb, weights=PAPER_WEIGHTS, temperature=0.01)
    for name, value in exact.items():
        assert mixed[name].dtype == torch.float32
        assert mixed[name].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-6), name


def test_default_grouping_is_the_four_term_objective_bit_for_bit():
    """Both halves of a term sharing its weight give weight x (Eq. term), summed over the four terms, exactly as
    the four-term objective did: trained adapters (and the demo's numbers) do not move by a rounding."""
    weights = {"redirection_contrastive": 0.375, "redirection_cosine": 0.6, "preservation_cosine": 0.5,
               "preservation_contrastive": 3.0}
    for seed in range(12):
        emb = {name: value.requires_grad_() for name, value in quadruplet_embeddings(n=64, d=32, seed=seed).items()}
        four_terms = torch.stack([
            weights["redirection_contrastive"] * redirection_contrastive_loss(
                emb["unsafe_text"], emb["safe_image_ref"], emb["unsafe_image"], emb["safe_text_ref"], temperature=0.05),
            weights["redirection_cosine"] * redirection_cosine_loss(
                emb["unsafe_text"], emb["safe_text_ref"], emb["unsafe_image"], emb["safe_image_ref"]),
            weights["preservation_cosine"] * preservation_cosine_loss(
                emb["safe_text"], emb["safe_text_ref"], emb["safe_image"], emb["safe_image_ref"]),
            weights["preservation_contrastive"] * preservation_contrastive_loss(
                emb["safe_text"], emb["safe_image_ref"], emb["safe_image"], emb["safe_text_ref"], temperature=0.05),
        ]).sum()
        total = safe_clip_objective(**emb, weights=weights, temperature=0.05)["total"]
        assert total.item() == four_terms.item(), seed
        for a, b in zip(torch.autograd.grad(total, list(emb.values())), torch.autograd.grad(four_terms, list(emb.values()))):
            assert torch.equal(a, b), seed
