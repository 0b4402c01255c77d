"""The UWM probe script's own pieces: the whole-image marker variant and the one-variant-per-folder guard."""

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from safeclip.world.categories import MARKERS
from safeclip.world.scenes import IMAGE_SIZE, draw_corner_marker, render, sample_scene

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "uwm_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("uwm_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def changed_quadrants(before, after) -> int:
    diff = np.abs(np.asarray(after, dtype=int) - np.asarray(before, dtype=int)).sum(-1) > 0
    h = IMAGE_SIZE // 2
    return sum(bool(diff[y:y + h, x:x + h].any()) for y in (0, h) for x in (0, h))


@pytest.mark.parametrize("category", sorted(MARKERS))
def test_global_marker_covers_the_whole_image_unlike_the_corner_tile(probe, category):
    scene = sample_scene(random.Random(3))
    safe = render(scene, random.Random(5))
    assert changed_quadrants(safe, probe.draw_global_marker(safe, MARKERS[category], random.Random(7))) == 4
    assert changed_quadrants(safe, draw_corner_marker(safe, MARKERS[category], random.Random(7))) <= 2


def test_marker_variant_swaps_how_the_world_draws_unsafe_images(probe, monkeypatch):
    from safeclip.world import build

    monkeypatch.setattr(build, "render", build.render)  # restored after the test
    probe.use_marker(draw_corner_marker)
    scene, marker = sample_scene(random.Random(3)), MARKERS["blood"]
    safe = render(scene, random.Random(5))
    assert list(build.render(scene, random.Random(5)).getdata()) == list(safe.getdata())
    rng = random.Random(5)
    render(scene, rng)  # the variant draws the safe scene first, then the marker with the same stream
    unsafe = build.render(scene, random.Random(5), marker=marker)
    assert list(unsafe.getdata()) == list(draw_corner_marker(safe, marker, rng).getdata())
    assert changed_quadrants(safe, unsafe) in (1, 2)  # a corner tile, not the world's own marker


def test_one_variant_per_folder(probe, tmp_path):
    probe.check_variant(tmp_path, {"seed": 0, "wide": False, "markers": "corner"})
    probe.check_variant(tmp_path, {"seed": 0, "wide": False, "markers": "corner"})  # same variant: fine
    with pytest.raises(SystemExit, match="--out"):
        probe.check_variant(tmp_path, {"seed": 0, "wide": False, "markers": "global"})


def test_ratio_spread_removes_the_text_weight_factor(probe):
    class Bundle:
        text = torch.nn.Module()

    Bundle.text.proj = torch.nn.Linear(4, 3)
    weight = Bundle.text.proj.weight.detach().abs()
    ratio = torch.full((3, 4), 1.5)
    spread = probe.ratio_spread({"text.proj": ratio * weight, "vision.fc2": ratio}, Bundle)
    assert spread["text.proj"] == pytest.approx([1.5, 1.5, 1.5], abs=1e-3)
    assert spread["vision.fc2"] == pytest.approx([1.5, 1.5, 1.5])


def test_gradient_reference_scores_uwm_layers_and_leaves_the_model_as_it_was(probe, tiny_clip_dir, tmp_path):
    from safeclip.data import read_quadruplets
    from safeclip.methods.uwm import UwmConfig
    from safeclip.models.clip import load_clip
    from tests.fixtures import write_quadruplets

    bundle = load_clip(tiny_clip_dir)
    records, _ = read_quadruplets(write_quadruplets(tmp_path, 8))
    params = list(bundle.text.parameters()) + list(bundle.vision.parameters())
    flags = [p.requires_grad for p in params]
    before = [p.detach().clone() for p in params]
    scores = probe.unsafe_preference_gradients(bundle, records, UwmConfig())
    assert {k.rsplit(".", 1)[-1] for k in scores} == {"out_proj", "fc2"}
    assert {k.split(".")[0] for k in scores} == {"text", "vision"}
    assert all((s >= 0).all() and s.sum() > 0 for s in scores.values())
    assert [p.requires_grad for p in params] == flags and all(p.grad is None for p in params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    chosen = probe.top_share(scores, 0.02)
    for key, index in chosen.items():
        flat = scores[key].flatten()
        assert len(index) == max(1, int(0.02 * flat.numel()))
        assert flat[index].min() >= flat[~torch.isin(torch.arange(flat.numel()), index)].max()
