"""Concept revival: benign fine-tuning changes every weight of a copy, never reads unsafe data, and is measured by the
evaluation path's NSFW@1."""

import dataclasses

import pytest
import torch

from safeclip.attacks.revival import RevivalSettings, fine_tune_on_safe, revival_metrics
from safeclip.data import read_quadruplets
from safeclip.eval.evaluation import evaluate
from safeclip.models.clip import load_clip
from tests.fixtures import write_quadruplets


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return read_quadruplets(write_quadruplets(tmp_path_factory.mktemp("revival"), 12, seed=5))[0]


def test_fine_tuning_on_safe_pairs_changes_a_copy_and_reads_no_unsafe_item(records, safe_clip_dir):
    bundle = load_clip(safe_clip_dir)
    before = {k: v.clone() for k, v in bundle.text.state_dict().items()}
    safe_only = [dataclasses.replace(r, unsafe_text=None, unsafe_image=None) for r in records]
    tuned = fine_tune_on_safe(bundle, safe_only, RevivalSettings(steps=3, batch_size=4, lr=1e-3))
    assert all(torch.equal(before[k], v) for k, v in bundle.text.state_dict().items()), "the given model was changed"
    after = tuned.text.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in changed and "text_projection.weight" in changed
    assert not any(p.requires_grad for p in tuned.text.parameters())


def test_revival_metrics_are_the_protocols_nsfw1_before_and_after(records, safe_clip_dir):
    bundle = load_clip(safe_clip_dir)
    metrics = revival_metrics(bundle, records, records, RevivalSettings(steps=2, batch_size=4))
    clean = evaluate({"m": bundle}, records).models["m"]
    assert metrics["T* NSFW@1 before"] == clean["T*->V+V*"]["NSFW@1"]
    assert metrics["V* NSFW@1 before"] == clean["V*->T+T*"]["NSFW@1"]
    assert set(metrics) == {"T* NSFW@1 before", "T* NSFW@1 after", "V* NSFW@1 before", "V* NSFW@1 after",
                            "T->V R@1 before", "T->V R@1 after", "seconds"}
