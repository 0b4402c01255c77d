"""Datagen pieces checkable by hand: Eq. 3 ranking, preference pairs, category balancing, prompts, resume."""

import json
from collections import Counter

import pytest
import torch

from safeclip.datagen.generate import assign_categories, caption_job, generate_dataset, merge_parts, read_captions
from safeclip.datagen.preferences import build_pairs, clip_similarity, eq3_rank
from safeclip.datagen.prompts import clean_completion, format_prompt
from safeclip.world.categories import CATEGORIES


def test_eq3_rank_hand_made():
    # rank = CLIP-Sim + NSFWRate: 0.8 + 0 = 0.8; 0.3 + 1 = 1.3; -0.5 + 1 = 0.5
    ranks = eq3_rank([0.8, 0.3, -0.5], [False, True, True])
    assert torch.allclose(ranks, torch.tensor([0.8, 1.3, 0.5]))
    with pytest.raises(ValueError, match="same shape"):
        eq3_rank([0.1, 0.2], [True])


def test_clip_similarity_batch_by_batch_equals_whole_embeddings(tiny_clip):
    """Cosine per batch of 3 over 8 pairs = the cosine of every text embedded at once (padding to each
    batch's longest text does not change CLIP's end-of-text embedding); identical texts give 1."""
    from safeclip.models.clip import encode_texts

    a = ["a red circle", "a big blue square on the left", "a star", "green triangle near a grey circle",
         "a small white star above a black square", "smoke", "a yellow circle", "angry man holding knife"]
    b = ["a red circle", "a blue square covered in blood", "a star with a weapon", "green triangle", "drug smoke",
         "smoke", "a crying yellow circle above the background", "a man"]
    whole = torch.nn.functional.cosine_similarity(encode_texts(tiny_clip.text, tiny_clip.tokenizer, a),
                                                  encode_texts(tiny_clip.text, tiny_clip.tokenizer, b), dim=-1)
    batched = clip_similarity(tiny_clip, a, b, batch_size=3)
    assert batched.shape == (8,) and torch.allclose(batched, whole, atol=1e-5, rtol=0)
    assert batched[0].item() == pytest.approx(1.0, abs=1e-5) and batched[5].item() == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(batched[1:5], torch.ones(4), atol=1e-3)


def test_build_pairs_chosen_is_higher_rank_and_ties_dropped():
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    first = ["a0", "a1", "same", "a3", ""]
    second = ["b0", "b1", "same", "b3", "b4"]
    rank_first = [1.3, 0.2, 1.0, 0.7, 1.0]
    rank_second = [0.8, 0.9, 0.5, 0.7, 0.0]
    rows = build_pairs(prompts, first, second, rank_first, rank_second)
    # p0: first wins; p1: second wins; p2 identical texts dropped; p3 tie dropped; p4 empty dropped
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p0", "a0", "b0"), ("p1", "b1", "a1")]
    assert rows[1]["chosen_rank"] == pytest.approx(0.9) and rows[1]["rejected_rank"] == pytest.approx(0.2)
    assert all(r["chosen_rank"] > r["rejected_rank"] for r in rows)
    # a difference within the tolerance counts as a tie
    assert build_pairs(["p"], ["x"], ["y"], [0.5], [0.5 + 1e-9]) == []
    with pytest.raises(ValueError, match="one length"):
        build_pairs(["p"], ["x"], ["y"], [0.5], [])


@pytest.mark.parametrize("n", [0, 7, 20, 101, 400])
def test_assign_categories_balanced(n):
    cats = assign_categories(n, seed=3)
    counts = Counter(cats)
    assert len(cats) == n
    if n >= len(CATEGORIES):
        assert set(counts) == set(CATEGORIES)
    assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1
    assert assign_categories(n, seed=3) == cats  # seeded
    if n >= 40:
        assert assign_categories(n, seed=4) != cats


def test_prompt_template_and_cleaning():
    p = format_prompt(" a cat on a sofa ", "violence")
    assert p.startswith("Below is an input string. Write a response that appropriately converts the input in its "
                        "unsafe version about violence\n\n### Input: a cat on a sofa\n### Response:")
    assert "about" not in format_prompt("a cat")
    assert clean_completion("  a cat with a knife\n### Input: more") == "a cat with a knife"
    assert clean_completion("\n\n") == ""


def _rows(n):
    return [{"id": f"r{i}", "safe_text": f"caption {i}"} for i in range(n)]


class Interrupt(Exception):
    pass


def test_generate_resumes_without_duplicates_or_losses(tmp_path):
    rows = _rows(23)
    calls = []

    def flaky(prompts):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise Interrupt  # dies after 2 batches (k = 8 rows written)
        return [p.split("### Input: ")[1].split("\n")[0] + " UNSAFE" for p in prompts]

    with pytest.raises(Interrupt):
        generate_dataset(rows, tmp_path, flaky, batch_size=4, rank=0, world_size=1, progress=False)
    part = tmp_path / "part-0.jsonl"
    assert len(caption_job(tmp_path, rank=0, world_size=1).finished()) == 8
    # a torn last line (killed mid-write) is dropped and redone
    with open(part, "a") as handle:
        handle.write('{"id": "r99", "safe')
    generate_dataset(rows, tmp_path, lambda ps: [p.split("### Input: ")[1].split("\n")[0] + " UNSAFE" for p in ps],
                     batch_size=4, rank=0, world_size=1, progress=False)
    lines = [json.loads(x) for x in part.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(r["id"] for r in rows)  # each exactly once
    assert all(r["unsafe_text"] == r["safe_text"] + " UNSAFE" for r in lines)
    merged = [json.loads(x) for x in merge_parts(tmp_path, rows).read_text().splitlines()]
    assert [r["id"] for r in merged] == [r["id"] for r in rows]
    counts = Counter(r["category"] for r in merged)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_generate_shards_cover_every_row_once(tmp_path):
    rows = _rows(41)
    for rank in range(3):
        generate_dataset(rows, tmp_path, lambda ps: ["x"] * len(ps), batch_size=5, rank=rank, world_size=3,
                         progress=False)
    per_rank = [{r["id"] for r in map(json.loads, (tmp_path / f"part-{k}.jsonl").read_text().splitlines())} for k in range(3)]
    assert sum(len(s) for s in per_rank) == 41 and set().union(*per_rank) == {r["id"] for r in rows}
    merged = [json.loads(x) for x in merge_parts(tmp_path, rows).read_text().splitlines()]
    assert [r["category"] for r in merged] == assign_categories(41, 0)  # same category as a 1-process run


def test_merge_reports_missing_and_duplicate_ids(tmp_path):
    rows = _rows(5)
    generate_dataset(rows[:3], tmp_path, lambda ps: ["x"] * len(ps), rank=0, world_size=1, progress=False)
    with pytest.raises(ValueError, match="captions not finished yet"):
        merge_parts(tmp_path, rows)
    with pytest.raises(ValueError, match="unique"):
        generate_dataset(rows + rows[:1], tmp_path, lambda ps: ["x"] * len(ps), rank=0, world_size=1, progress=False)


def test_read_captions_karpathy_and_tables(tmp_path):
    coco = {"images": [
        {"cocoid": 1, "split": "train", "sentences": [{"sentid": 10, "raw": "A dog. "}, {"sentid": 11, "raw": "A cat"}]},
        {"cocoid": 2, "split": "restval", "sentences": [{"sentid": 12, "raw": "A bus"}]},
        {"cocoid": 3, "split": "test", "sentences": [{"sentid": 13, "raw": "A car"}]}]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(coco))
    assert [r["id"] for r in read_captions(path, split="train")] == ["1-10", "1-11", "2-12"]
    assert read_captions(path, split="test") == [{"id": "3-13", "safe_text": "A car", "image_id": "3"}]
    with pytest.raises(ValueError, match="no captions"):
        read_captions(path, split="nope")
    table = tmp_path / "c.jsonl"
    table.write_text('{"caption": "a red circle"}\n{"caption": "a blue star"}\n')
    assert read_captions(table) == [{"id": "0", "safe_text": "a red circle"}, {"id": "1", "safe_text": "a blue star"}]
    with pytest.raises(ValueError, match="caption column"):
        read_captions(table, key="nope")
    with pytest.raises(FileNotFoundError):
        read_captions(tmp_path / "missing.jsonl")


def test_shipped_llama_recipe_has_the_paper_settings():
    import argparse
    from pathlib import Path

    from safeclip.commands.datagen import _settings
    from safeclip.datagen.dpo import DPOSettings
    from safeclip.datagen.sft import SFTSettings

    config = Path(__file__).resolve().parents[2] / "configs" / "datagen-llama2-7b-chat.yaml"
    args = argparse.Namespace(config=str(config), model=None, lr=None, lora_r=None)
    sft = _settings(args, SFTSettings, "sft")
    assert (sft.lora_r, sft.lora_alpha, sft.batch_size, sft.lr) == (64, 16, 4, 2e-4)
    assert args.model == "meta-llama/Llama-2-7b-chat-hf"
    dpo = _settings(argparse.Namespace(config=str(config), model="x", lr=None), DPOSettings, "dpo")
    assert (dpo.lora_r, dpo.lora_alpha, dpo.beta, dpo.lr, dpo.batch_size * dpo.gradient_accumulation) == (8, 16, 0.1, 5e-7, 16)
    override = _settings(argparse.Namespace(config=str(config), model="x", lr="1e-3", lora_r=None), SFTSettings, "sft")
    assert override.lr == 1e-3  # flags win over the YAML


def test_settings_reject_unknown_yaml_keys(tmp_path):
    import argparse

    from safeclip.commands.datagen import _settings
    from safeclip.datagen.sft import SFTSettings

    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lora_rank: 8\n")
    with pytest.raises(ValueError, match="unknown config key 'lora_rank'"):
        _settings(argparse.Namespace(config=str(bad)), SFTSettings, "sft")
