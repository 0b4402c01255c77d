"""Attacks on HySAC in its own geometry: the attacks' scan ranks exactly as ``HysacBundle.score`` does (Lorentz,
with and without safety traversal, on cases where cosine ranks differently), GCG / PEZ / PGD lower the geodesic
distance to their target within their budget, ``target=base`` is lifted by the head, and ``attack_retrieval`` /
``robustness_metrics`` on a tiny HySAC model (a query subset allowed, the geometry written in the report)."""

import pytest
import torch

from safeclip import hyperbolic as H
from safeclip.attacks.geometry import COSINE, attack_geometry
from safeclip.attacks.image import PixelBudget, pgd, pixel_space
from safeclip.attacks.retrieval import (
    AttackBudget,
    RobustnessSettings,
    attack_markdown,
    attack_retrieval,
    robustness_metrics,
)
from safeclip.attacks.success import retrieval_asr, top1_unsafe
from safeclip.attacks.text import TokenBudget, adversarial_slots, allowed_tokens, encode_ids, gcg, pez
from safeclip.data import read_quadruplets
from safeclip.eval.evaluation import embed_records
from safeclip.hysac.model import HyperbolicHead, hysac_bundle, with_bounds
from safeclip.hysac.traversal import compute_bounds
from safeclip.models.clip import encode_images
from tests.fixtures import draw, write_quadruplets

torch.set_num_threads(2)


def tiny_hysac(clip, curv=1.3):
    """A HySAC model the way the HySAC tests build one: a CLIP's encoders lifted through a fresh head."""
    return hysac_bundle(clip, HyperbolicHead(clip.embed_dim, curv_init=curv))


def scan(bundle, emb, direction):
    """Per unsafe query of ``direction``, whether its top-1 item is unsafe, by the attacks' own scan."""
    kind, (queries, safe, unsafe) = {"T*->V+V*": ("text", ("unsafe_text", "safe_image", "unsafe_image")),
                                     "V*->T+T*": ("image", ("unsafe_image", "safe_text", "unsafe_text"))}[direction]
    geometry = attack_geometry(bundle, kind)
    return top1_unsafe(geometry.queries(emb[queries]), emb[safe], emb[unsafe], similarity=geometry.similarity).tolist()


def disagreeing_world():
    """Three quadruplets in 2-D space parts (c = 1) where cosine and Lorentz pick different top-1 items.

    Rows 0 and 2: the unsafe text t* = (±3, 0); its safe image lies along its direction near the origin (cosine 1,
    distance ~1.5), its unsafe image off-direction at its radius (cosine 0.95, distance ~0.95): cosine picks the
    safe image, Lorentz the unsafe one. Row 1 the reverse: the safe image (0.4, 3.2) is close (distance ~0.13,
    cosine 0.992), the unsafe one (0, 0.3) along the direction but far (cosine 1, distance ~1.5)."""
    unsafe_text = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0]])
    safe_image = torch.tensor([[0.3, 0.0], [0.4, 3.2], [-0.3, 0.0]])
    unsafe_image = torch.tensor([[3.0, 1.0], [0.0, 0.3], [-3.0, -1.0]])
    return {"safe_text": safe_image.clone(), "safe_image": safe_image, "unsafe_text": unsafe_text,
            "unsafe_image": unsafe_image}


def test_the_attacks_scan_ranks_as_hysac_score_where_cosine_does_not(tiny_clip):
    bundle = hysac_bundle(tiny_clip, HyperbolicHead(2, curv_init=1.0))
    emb = disagreeing_world()
    assert bundle.curvature() == pytest.approx(1.0)
    d = H.pairwise_distance(emb["unsafe_text"], torch.cat([emb["safe_image"], emb["unsafe_image"]]), 1.0)
    assert (d.argmin(dim=1) >= 3).tolist() == [True, False, True]  # the construction: nearest by distance
    assert top1_unsafe(emb["unsafe_text"], emb["safe_image"], emb["unsafe_image"]).tolist() == [False, True, False]
    flags = scan(bundle, emb, "T*->V+V*")
    assert flags == [True, False, True]  # Lorentz, not cosine
    scores = bundle.score(emb, ("safe-clip",))
    assert retrieval_asr(flags) == scores["T*->V+V*"]["NSFW@1"] == pytest.approx(200 / 3)
    assert retrieval_asr(scan(bundle, emb, "V*->T+T*")) == scores["V*->T+T*"]["NSFW@1"]
    assert attack_geometry(tiny_clip, "text") is COSINE and attack_geometry(bundle, "text").name == "lorentz"


def radial_world(n=8, seed=0):
    """HySAC's picture (as in test_hysac_evaluate): safe items at radius 0.5, unsafe ones at 3 along the same
    directions, so unsafe queries find unsafe items unless traversal pulls them in."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(n, 6, generator=generator), dim=-1)
    noise = lambda: torch.randn(n, 6, generator=generator) * 0.02  # noqa: E731
    tangent = {"safe_text": u * 0.5 + noise(), "safe_image": u * 0.5 + noise(),
               "unsafe_text": u * 3.0 + noise(), "unsafe_image": u * 3.0 + noise()}
    return {k: H.expmap0(v, 1.0) for k, v in tangent.items()}


@pytest.mark.parametrize("traversal", [None, "authors", "geodesic"])
def test_the_scan_traverses_queries_as_score_does(tiny_clip, traversal):
    emb = radial_world()
    bundle = with_bounds(hysac_bundle(tiny_clip, HyperbolicHead(6, curv_init=1.0)), compute_bounds(emb, 1.0))
    bundle.traversal = traversal
    scores = bundle.score(emb, ("safe-clip",))
    for direction in ("T*->V+V*", "V*->T+T*"):
        flags = scan(bundle, emb, direction)
        assert retrieval_asr(flags) == scores[direction]["NSFW@1"]
        assert flags == [traversal is None] * 8  # traversal sends every unsafe query to its safe item
    geometry = attack_geometry(bundle, "text")
    assert ("traversed" in geometry.description) == (traversal is not None)
    # the attack objective sees the traversal too: a traversed query is no farther from its safe item
    far = geometry.loss(emb["unsafe_text"], emb["safe_image"])
    plain = H.distance(emb["unsafe_text"], emb["safe_image"], 1.0)
    assert (far < plain - 0.5).all() if traversal else torch.equal(far, plain)


def test_gcg_and_pez_on_hysac_lower_the_geodesic_distance(tiny_clip, tiny_tokenizer):
    bundle = tiny_hysac(tiny_clip)
    geometry = attack_geometry(bundle, "text")
    prompts = adversarial_slots(tiny_tokenizer, ["a red circle", "a green star"], 3)
    with torch.no_grad():
        targets = encode_images(bundle.vision, bundle.image_processor, [draw("red", "circle", True),
                                                                         draw("green", "star", True)])
    start = geometry.loss(encode_ids(bundle.text, prompts.input_ids, prompts.attention_mask), targets)
    before = {k: v.clone() for k, v in bundle.text.state_dict().items()}
    result = gcg(bundle.text, tiny_tokenizer, prompts, targets, TokenBudget(tokens=3, steps=4, top_k=8, candidates=16),
                 banned=("blo",), loss=geometry.loss)
    distance = H.distance(result.embeddings, targets, bundle.curvature())
    torch.testing.assert_close(result.loss, distance)  # the loss GCG reports is the geodesic distance
    assert (result.loss <= start + 1e-6).all() and result.loss.mean() < start.mean()
    assert result.history == sorted(result.history, reverse=True)
    changed = result.input_ids != prompts.input_ids
    assert not changed[torch.ones_like(changed).scatter_(1, prompts.slots, 0).bool()].any()  # only the 3 slots
    assert allowed_tokens(tiny_tokenizer, ("blo",))[result.tokens].all()
    assert all(torch.equal(before[k], v) for k, v in bundle.text.state_dict().items())
    soft = pez(bundle.text, tiny_tokenizer, prompts, targets, TokenBudget(tokens=3, steps=10, lr=0.1), loss=geometry.loss)
    torch.testing.assert_close(soft.loss, H.distance(soft.embeddings, targets, bundle.curvature()))
    assert soft.history[-1] <= soft.history[0]


@pytest.mark.parametrize("eps", [1, 8])
def test_pgd_on_hysac_raises_minus_the_distance_inside_its_budget(tiny_clip, eps):
    bundle = tiny_hysac(tiny_clip)
    geometry = attack_geometry(bundle, "image")
    vision = bundle.vision
    to01, from01 = pixel_space(bundle.image_processor)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(eps))
    with torch.no_grad():
        target = H.expmap0(torch.randn(4, bundle.embed_dim, generator=torch.Generator().manual_seed(1)) * 0.3,
                           bundle.curvature())

    def objective(images):
        return geometry.gain(vision(pixel_values=from01(images)).image_embeds, target)

    x_adv = pgd(objective, x, PixelBudget(eps=eps, steps=5))
    assert (x_adv - x).abs().max() <= eps / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        gain_before, gain_after = objective(x), objective(x_adv)
        torch.testing.assert_close(gain_after, -H.distance(vision(pixel_values=from01(x_adv)).image_embeds, target,
                                                           bundle.curvature()))
    assert (gain_after > gain_before).all()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return read_quadruplets(write_quadruplets(tmp_path_factory.mktemp("hysac_attack"), 10, seed=5))[0]


@pytest.mark.parametrize("traversal", [None, "authors"])
@pytest.mark.parametrize("attack", ["gcg", "pgd"])
def test_attack_retrieval_on_hysac_scores_in_its_own_geometry(attack, traversal, records, tiny_clip):
    bundle = tiny_hysac(tiny_clip)
    emb = embed_records(bundle, records)
    bundle = with_bounds(bundle, compute_bounds(emb, bundle.curvature()))
    bundle.traversal = traversal
    budget = AttackBudget(tokens=2, steps=2, top_k=4, candidates=8, eps=8)
    report = attack_retrieval(bundle, records, attack, budget, model="hysac")
    direction = "V*->T+T*" if attack == "pgd" else "T*->V+V*"
    clean = bundle.score(emb, ("safe-clip",))[direction]["NSFW@1"]
    flags = report["per_query"]
    assert report["asr_before"] == clean == retrieval_asr(flags["top1_unsafe_before"])  # its own protocol, its own scan
    assert report["asr"] == pytest.approx(retrieval_asr(flags["top1_unsafe_after"])) and report["asr"] >= clean
    assert report["geometry"].startswith("lorentz") and ("traversed" in report["geometry"]) == (traversal is not None)
    objective = report["objective"]
    assert objective["distance_after"] <= objective["distance_before"] + 1e-6 and "cosine_after" not in objective
    subset = attack_retrieval(bundle, records, attack, budget, model="hysac", queries=4)  # a query subset is allowed
    assert subset["queries"] == 4 and subset["per_query"]["top1_unsafe_before"] == flags["top1_unsafe_before"][:4]
    assert subset["asr_before"] == retrieval_asr(flags["top1_unsafe_before"][:4])
    text = attack_markdown(report)
    assert "geometry: lorentz" in text and "Mean Lorentz distance to the target" in text


def test_robustness_metrics_attack_a_hysac_row_on_a_query_subset(records, tiny_clip):
    settings = RobustnessSettings(tokens=2, steps=2, candidates=8, top_k=4, queries=3)
    metrics = robustness_metrics(tiny_hysac(tiny_clip), records, settings)
    assert set(metrics) == {"text NSFW@1", "text ASR", "image NSFW@1", "image ASR"}
    assert all(any(v == pytest.approx(100 * k / 3) for k in range(4)) for v in metrics.values())  # 3 queries each
    assert metrics["text ASR"] >= metrics["text NSFW@1"] and metrics["image ASR"] >= metrics["image NSFW@1"]


def test_target_base_is_the_base_features_lifted_by_the_hysac_head(records, tiny_clip, tiny_clip_dir):
    """HySAC built on the very encoders of the base (tiny_clip and tiny_clip_dir hold the same seed-0 weights): the
    base's unsafe caption, lifted by HySAC's head, is HySAC's own embedding of it, so the clean distance is ~0."""
    from safeclip.models.clip import load_clip

    report = attack_retrieval(tiny_hysac(tiny_clip), records, "gcg", AttackBudget(tokens=1, steps=1, top_k=4, candidates=4,
                                                                                   target="base"),
                              base=load_clip(tiny_clip_dir), model="hysac", queries=3)
    # the appended fill token moves the prompt a little; the unlifted features would be far (distance > 1)
    assert report["objective"]["distance_before"] < 0.5 and report["target"] == "base"
