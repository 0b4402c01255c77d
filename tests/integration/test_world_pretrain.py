"""The base-model build at small settings: it learns, saves a loadable HF CLIP folder, and is cached."""

import json

import pytest
from transformers import CLIPModel

from safeclip.models.clip import load_clip
from safeclip.world import build_world, pretrain_base
from safeclip.world.pretrain import PretrainSettings

SMALL = {"epochs": 3, "batch_size": 64, "hidden_size": 32, "num_layers": 1, "intermediate_size": 64,
         "projection_dim": 32, "patch_size": 8, "vocab_size": 400, "warmup_steps": 2}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    world = build_world(root / "world", seed=0, progress=False, n_train=320, n_val=20, n_test=20, n_found=10, n_distractors=10)
    return world, pretrain_base(world, root / "base", seed=0, progress=False, **SMALL)


def test_pretrained_base_loads_like_any_clip_and_learned(base):
    world, folder = base
    bundle = load_clip(folder)
    assert bundle.tokenizer("a red circle")["input_ids"][0] == 0
    CLIPModel.from_pretrained(folder)
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in log[:3]) / 3, sum(r["loss"] for r in log[-3:]) / 3
    assert last < first - 0.2, (first, last)
    meta = json.loads((folder / "base.json").read_text())
    assert meta["key"]["settings"]["seed"] == 0 and meta["key"]["world"]["n_train"] == 320
    # A setting added later stays out of the key at its default, so bases built before it existed are reused.
    assert "batch_pairs" not in meta["key"]["settings"]


def test_second_call_is_a_cache_hit_and_other_settings_rebuild(base):
    world, folder = base
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert pretrain_base(world, folder, seed=0, progress=False, **SMALL) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_world_cli_reports_missing_world(tmp_path, capsys):
    from safeclip.cli import main

    assert main(["world", "pretrain", "--world", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "not a built world" in capsys.readouterr().err


def test_random_batches_learn_too_and_unknown_pairing_is_refused(base, tmp_path):
    world, _ = base
    folder = pretrain_base(world, tmp_path / "random", seed=0, progress=False, batch_pairs="random", **SMALL)
    log = [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert sum(log[-3:]) / 3 < sum(log[:3]) / 3 - 0.2
    assert json.loads((folder / "base.json").read_text())["key"]["settings"]["batch_pairs"] == "random"
    with pytest.raises(ValueError, match="batch_pairs must be 'scene' or 'random'"):
        PretrainSettings(batch_pairs="pairs")
