"""The methods interface: registry, SafeR-CLIP proximity targets and curriculum, UWM's reversible edit."""

import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from safeclip.data import read_quadruplets
from safeclip.losses import cosine_matrix
from safeclip.methods import Budget, MethodInputs, get_method
from safeclip.methods.safer_clip import (SaferClipConfig, curriculum_buckets, epoch_stage, proximity_targets,
                                         relative_redirection)
from safeclip.methods.uwm import (UwmConfig, WeightEdit, calibrate, category_groups, select_by_mass, select_edit,
                                  token_statistics, uwm_summary)
from safeclip.models.clip import encode_texts, load_clip
from tests.fixtures import write_quadruplets


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="safe-clip, safer-clip, uwm, hysac, hysac\+traversal"):
        get_method("meru")
    assert callable(get_method("uwm")) and callable(get_method("hysac"))


def test_proximity_targets_on_hand_made_embeddings():
    # Safe captions e1, e2, (e1+e3)/sqrt2. Unsafe 0 = e1 + 0.1 e3 -> nearest safe 0 (cos .995 vs .77);
    # unsafe 1 = e2 + e3 -> safe 1 and 2 both cos .5; ties go to the lowest index: 1;
    # unsafe 2 = e3 + 0.2 e1 -> safe 2 (cos .83) rather than safe 0 (.196).
    safe = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    unsafe = torch.tensor([[1.0, 0.0, 0.1], [0.0, 1.0, 1.0], [0.2, 0.0, 1.0]])
    assert proximity_targets(unsafe, safe).tolist() == [0, 1, 2]
    # Excluding the own pair: unsafe 0 -> safe 2 (cos .77 > 0), unsafe 1 -> safe 2 (.5 > 0),
    # unsafe 2 -> safe 0 (.196 > 0).
    assert proximity_targets(unsafe, safe, exclude_own_pair=True).tolist() == [2, 2, 0]
    # Scale does not matter (cosine).
    assert proximity_targets(unsafe * 5, safe * torch.tensor([[2.0], [3.0], [0.5]])).tolist() == [0, 1, 2]


def test_proximity_targets_in_chunks_equal_the_full_matrix_choice():
    """Row blocks of any size pick what the argmax of the whole (N, M) cosine matrix picks, ties included."""
    generator = torch.Generator().manual_seed(0)
    safe = torch.randn(53, 16, generator=generator)
    unsafe = torch.randn(53, 16, generator=generator)
    safe[7] = safe[3] * 2.0  # exact ties: both columns score the same for every row; the lower index wins
    unsafe[10] = safe[20] * 0.5  # a row whose nearest safe row is at cosine 1
    full = cosine_matrix(unsafe, safe)
    full_own = full.clone().fill_diagonal_(-float("inf"))
    assert (full.argmax(1) == 7).sum() == 0 and (full.argmax(1) == 3).sum() > 0  # the tie is exercised
    for chunk_elements in (1, 53, 5 * 53 + 1, 17 * 53, 10**9):  # 1 row, 1 row, 5 rows, 17 rows, everything
        assert torch.equal(proximity_targets(unsafe, safe, chunk_elements=chunk_elements), full.argmax(1))
        assert torch.equal(proximity_targets(unsafe, safe, exclude_own_pair=True, chunk_elements=chunk_elements),
                           full_own.argmax(1))
    assert proximity_targets(unsafe, safe)[10] == 20


def test_curriculum_tertiles_and_stages():
    sim = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.2, 0.6])
    # Most similar third (0.9, 0.8) easy, next (0.6, 0.5) medium, least (0.2, 0.1) hard.
    assert curriculum_buckets(sim).tolist() == [2, 0, 1, 0, 2, 1]
    assert curriculum_buckets(sim, easy="dissimilar").tolist() == [0, 2, 1, 2, 0, 1]
    assert [epoch_stage(e, 3) for e in range(3)] == [0, 1, 2]
    assert [epoch_stage(e, 9) for e in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [epoch_stage(e, 2) for e in range(2)] == [0, 2] and epoch_stage(0, 1) == 2


def test_relative_redirection_by_hand():
    # q = e1; own unsafe e1 (cos 1), target e2 (cos 0): softplus(s * 1); reversed: softplus(-s).
    q, e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert relative_redirection(q, e1, e2, 2.0).item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(2.0)).item())
    assert relative_redirection(q, e2, e1, 2.0).item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(-2.0)).item())


def test_uwm_statistics_and_selection_by_hand():
    # One sample, 3 tokens, d_in 1: values 1, 2, 2 with the last token masked -> norm sqrt5, std of (1, 2) = 0.7071.
    x = torch.tensor([[[1.0], [2.0], [2.0]]])
    norm, std = token_statistics(x, torch.tensor([[1, 1, 0]]))
    assert norm.item() == pytest.approx(5 ** 0.5) and std.item() == pytest.approx(0.5 ** 0.5)
    # Scores 1, 1, 2, 96 (sum 100): cumulative ascending mass .01 .02 .04 1.0 -> only past 0.98: the 96.
    assert select_by_mass(torch.tensor([[96.0, 1.0], [2.0, 1.0]]), 0.98).tolist() == [0]
    # Past 0.01: everything but the first of the smallest (cumulative .01 is not > .01).
    assert select_by_mass(torch.tensor([[96.0, 1.0], [2.0, 1.0]]), 0.01).tolist() == [0, 2, 3]


@pytest.fixture(scope="module")
def quads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quads")
    return write_quadruplets(folder, 24, seed=0)


def naive_uwm_scores(bundle, records, cfg: UwmConfig) -> dict:
    """Steps 2-4 of UWM written out per pair: one forward per item (no padding), the full (d_out, d_in)
    saliency S_ij = (mean_j' n_j'|W_ij'|) (n_j mean_i' |W_i'j|) / s_j of each, the mean of S(t*) / S(t)."""
    from safeclip.data.loader import load_rgb

    layers = {**{f"text.{n}": m for n, m in bundle.text.named_modules() if n.endswith("out_proj")},
              **{f"vision.{n}": m for n, m in bundle.vision.named_modules() if n.endswith("fc2")}}
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: inputs.__setitem__(k, inp[0][0].detach()))
             for k, m in layers.items()]

    def saliency(side: str, value) -> dict:
        with torch.no_grad():
            if side == "text":
                bundle.text(**bundle.tokenizer([value], return_tensors="pt"))
            else:
                bundle.vision(pixel_values=bundle.image_processor(images=load_rgb(value), return_tensors="pt")["pixel_values"])
        out = {}
        for k, x in ((k, x) for k, x in inputs.items() if k.startswith(side)):  # x: (L, d_in), every token valid
            w = layers[k].weight.detach().abs()
            a = x.norm(dim=0) * w  # A_ij = n_j |W_ij|
            out[k] = a.mean(1, keepdim=True) * a.mean(0, keepdim=True) / x.std(dim=0)
        return out

    total = {k: torch.zeros_like(m.weight) for k, m in layers.items()}
    for r in records:
        for side, safe, unsafe in (("text", r.safe_text, r.unsafe_text), ("vision", r.safe_image, r.unsafe_image)):
            s_safe, s_unsafe = saliency(side, safe), saliency(side, unsafe)
            for k in s_safe:
                total[k] += s_unsafe[k] / s_safe[k]
    for h in hooks:
        h.remove()
    return {k: v / len(records) * (layers[k].weight.detach().abs() if k.startswith("text.") else 1) for k, v in total.items()}


def test_uwm_calibration_equals_the_per_pair_definition(tiny_clip_dir, quads):
    """Batched calibration with statistics taken inside the hooks (padded text batches of 5, 24 pairs) gives
    the per-pair scores of the definition, up to float rounding; so does the selection."""
    bundle = load_clip(tiny_clip_dir)
    records, _ = read_quadruplets(quads)
    cfg = UwmConfig(sparsity=0.9, batch_size=5)
    scores, expected = calibrate(bundle, records, cfg), naive_uwm_scores(bundle, records, cfg)
    assert scores.keys() == expected.keys() and len(scores) == 4
    for k in scores:
        assert torch.allclose(scores[k], expected[k], rtol=1e-3, atol=0), k
    assert select_edit(bundle, scores, cfg).counts() == select_edit(bundle, expected, cfg).counts()


def test_uwm_edit_changes_outputs_and_undo_is_bit_exact(tiny_clip_dir, quads, tmp_path):
    bundle = load_clip(tiny_clip_dir)
    records, _ = read_quadruplets(quads)
    before = {k: v.clone() for k, v in {**{f"t.{n}": p for n, p in bundle.text.state_dict().items()},
                                        **{f"v.{n}": p for n, p in bundle.vision.state_dict().items()}}.items()}
    texts = [r.unsafe_text for r in records[:6]]
    emb_before = encode_texts(bundle.text, bundle.tokenizer, texts)
    cfg = UwmConfig(sparsity=0.9)
    scores = calibrate(bundle, records, cfg)
    assert {k.split(".")[0] for k in scores} == {"text", "vision"}
    assert all(k.endswith("out_proj") for k in scores if k.startswith("text."))
    assert all(k.endswith("fc2") for k in scores if k.startswith("vision."))
    edit = select_edit(bundle, scores, cfg)
    assert all(0 < n < scores[k].numel() for k, n in edit.counts().items())
    edit.apply(bundle)
    changed = [k for k, v in bundle.text.state_dict().items() if not torch.equal(v, before[f"t.{k}"])]
    assert changed and all(k.endswith("out_proj.weight") for k in changed)
    assert not torch.allclose(encode_texts(bundle.text, bundle.tokenizer, texts), emb_before)
    # Save, load, undo: every weight bit-identical to the original.
    loaded = WeightEdit.load(edit.save(tmp_path / "edit.safetensors"))
    assert loaded.alpha == -1.0 and loaded.counts() == edit.counts()
    loaded.applied = True
    loaded.undo(bundle)
    for k, v in bundle.text.state_dict().items():
        assert torch.equal(v, before[f"t.{k}"]), k
    for k, v in bundle.vision.state_dict().items():
        assert torch.equal(v, before[f"v.{k}"]), k
    assert torch.equal(encode_texts(bundle.text, bundle.tokenizer, texts), emb_before)
    # Applying to other weights is refused.
    with torch.no_grad():
        first_text_layer = next(k for k in scores if k.startswith("text.")).split(".", 1)[1]
        bundle.text.get_submodule(first_text_layer).weight.mul_(2)
    with pytest.raises(ValueError, match="other weights"):
        loaded.apply(bundle)


def test_uwm_method_reuses_its_saved_edit(tiny_clip_dir, quads, tmp_path):
    inputs = MethodInputs(base=tiny_clip_dir, train=quads, out_dir=tmp_path / "uwm", budget=Budget(calibration_rows=16),
                          overrides=["sparsity=0.9"], progress=False)
    first = get_method("uwm")(inputs)
    saved = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "uwm").iterdir()}
    again = get_method("uwm")(inputs)
    for (k, a), b in zip(first.text.state_dict().items(), again.text.state_dict().values()):
        assert torch.equal(a, b), k
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "uwm").iterdir()} == saved  # loaded
    with pytest.raises(ValueError, match="unknown config key 'uwm:nope'"):
        get_method("uwm")(MethodInputs(base=tiny_clip_dir, train=quads, out_dir=tmp_path / "x", overrides=["nope=1"]))
    # The saved edit is not reused for other settings (a run-only setting such as batch_size does not matter).
    with pytest.raises(ValueError, match=r"other inputs \(settings.sparsity\)"):
        get_method("uwm")(replace(inputs, overrides=["sparsity=0.95"]))
    get_method("uwm")(replace(inputs, overrides=["sparsity=0.9", "batch_size=4"]))


def test_uwm_saved_edit_is_keyed_on_every_input(tiny_clip_dir, tiny_tokenizer, quads, tmp_path):
    """Another seed, calibration_rows, training file or base model each changes the edit: never reused."""
    from safeclip.models.clip import build_tiny_clip
    from safeclip.models.lora import save_merged_clip

    inputs = MethodInputs(base=tiny_clip_dir, train=quads, out_dir=tmp_path / "uwm", budget=Budget(calibration_rows=16),
                          overrides=["sparsity=0.9"], progress=False)
    get_method("uwm")(inputs)
    other_base = tmp_path / "other_base"
    save_merged_clip(build_tiny_clip(tiny_tokenizer, seed=1), other_base)
    other_train = write_quadruplets(tmp_path / "other_quads", 24, seed=1)
    for changed, other in (("seed", replace(inputs, seed=1)),
                           ("calibration_rows", replace(inputs, budget=Budget(calibration_rows=8))),
                           ("train_sha256", replace(inputs, train=other_train)),
                           ("base_sha256", replace(inputs, base=other_base))):
        with pytest.raises(ValueError, match=rf"other inputs \({changed}\)"):
            get_method("uwm")(other)
    # Each of them, in a folder of its own, gives another edit than the first one.
    first = WeightEdit.load(tmp_path / "uwm" / "edit.safetensors")
    seeded = replace(inputs, seed=1, out_dir=tmp_path / "uwm-seed-1")
    get_method("uwm")(seeded)
    seeded_edit = WeightEdit.load(tmp_path / "uwm-seed-1" / "edit.safetensors")
    assert any(not torch.equal(seeded_edit.index[k], first.index[k]) for k in first.index)


def test_uwm_category_groups():
    records = [SimpleNamespace(category=c) for c in ("blood", "hate", "blood", "weapons")]
    assert list(category_groups(records, "")) == ["all"] and len(category_groups(records, "")["all"]) == 4
    groups = category_groups(records, "each")
    assert list(groups) == ["blood", "hate", "weapons"] and [len(g) for g in groups.values()] == [2, 1, 1]
    assert list(category_groups(records, "weapons, blood")) == ["weapons", "blood"]
    with pytest.raises(ValueError, match="'nudity'.*blood, hate, weapons"):
        category_groups(records, "nudity")
    with pytest.raises(ValueError, match="1 rows have none"):
        category_groups(records + [SimpleNamespace(category="")], "each")


def test_uwm_union_of_category_selections(tiny_clip_dir):
    bundle = load_clip(tiny_clip_dir)
    key = "text." + next(n for n, m in bundle.text.named_modules() if n.endswith("out_proj"))
    shape = bundle.text.get_submodule(key.split(".", 1)[1]).weight.shape
    first, second = torch.ones(shape), torch.ones(shape)
    first.view(-1)[3], second.view(-1)[7] = 1e9, 1e9  # each category's mass sits on its own weight
    cfg = UwmConfig(sparsity=0.98)
    assert select_edit(bundle, {key: first}, cfg).index[key].tolist() == [3]
    union = select_edit(bundle, [{key: second}, {key: first}, {key: first}], cfg)
    assert union.index[key].tolist() == [3, 7]
    assert torch.equal(union.original[key], bundle.text.get_submodule(key.split(".", 1)[1]).weight.view(-1)[[3, 7]])


def test_uwm_method_per_category(tiny_clip_dir, quads, tmp_path):
    inputs = MethodInputs(base=tiny_clip_dir, train=quads, out_dir=tmp_path / "uwm", budget=Budget(calibration_rows=16),
                          overrides=["sparsity=0.9", "categories=each"], progress=False)
    get_method("uwm")(inputs)
    summary = uwm_summary(tmp_path / "uwm")
    records, _ = read_quadruplets(quads)
    sampled = random.Random(inputs.seed).sample(records, 16)
    assert summary["selections"] == {c: sum(r.category == c for r in sampled) for c in sorted({r.category for r in sampled})}
    assert summary["config"]["categories"] == "each"


def test_safer_clip_trains_adapters_and_caches_targets(tiny_clip_dir, quads, tmp_path):
    inputs = MethodInputs(base=tiny_clip_dir, train=quads, out_dir=tmp_path / "safer", progress=False,
                          budget=Budget(epochs=3, batch_size=4), overrides=["lora_r=2"])
    bundle = get_method("safer-clip")(inputs)
    out = tmp_path / "safer"
    for name in ("targets.safetensors", "targets.json", "adapters/text_adapter/adapter_config.json",
                 "adapters/vision_adapter/adapter_config.json", "summary.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    lora = {n: p for n, p in bundle.text.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # lora_B starts at 0: training moved it
    base = load_clip(tiny_clip_dir)
    texts = ["a red circle covered in blood"]
    assert not torch.allclose(encode_texts(bundle.text, bundle.tokenizer, texts), encode_texts(base.text, base.tokenizer, texts))
    assert SaferClipConfig().image_target == "nearest"
