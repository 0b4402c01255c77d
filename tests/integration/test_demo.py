"""`safeclip demo` end to end at small size: every stage, the results shape, the exported model, determinism."""

import json

import pytest
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from safeclip.demo import DemoSize, run_demo
from safeclip.methods.base import Budget
from safeclip.world.build import WorldSize
from safeclip.world.pretrain import PretrainSettings
from tests.generators import run_tiny_llava, tiny_stable_diffusion

SMALL = DemoSize(world=WorldSize(n_train=240, n_val=40, n_test=60, n_found=20, n_distractors=20),
                 pretrain=PretrainSettings(epochs=2, batch_size=64, hidden_size=32, num_layers=1, intermediate_size=64,
                                           projection_dim=32, patch_size=8, vocab_size=400, warmup_steps=2),
                 budget=Budget(epochs=2, batch_size=32))
SMALL.safe_clip.lora.r = 4
SMALL.safe_clip.run.eval_batch_size = 64
DIRECTIONS = {"T->V": {"R@1", "R@5", "R@10", "R@20"}, "V->T": {"R@1", "R@5", "R@10", "R@20"},
              "T*->V+V*": {"R@1", "R@5", "R@10", "R@20", "NSFW@1"}, "V*->T+T*": {"R@1", "R@5", "R@10", "R@20", "NSFW@1"}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, seed=0, size=SMALL, progress=False)


def test_results_json_has_the_documented_shape(demo):
    out, results = demo
    assert results["protocol"] == "safe-clip" and set(results["models"]) == {"base", "safe-clip"}
    for model in results["models"].values():
        assert {d: set(v) for d, v in model.items()} == DIRECTIONS
        assert all(0.0 <= x <= 100.0 for entry in model.values() for x in entry.values())
    assert json.loads((out / "results.json").read_text()) == results


def test_every_stage_has_its_folder_and_the_report_its_pictures(demo):
    out, _ = demo
    for path in ("world/world.json", "base/base.json", "run/summary.json", "run/best/metrics.json",
                 "model/config.json", "report.md", "results.md", "curves.png", "examples_t2v.png", "examples_v2t.png"):
        assert (out / path).is_file(), path
    report = (out / "report.md").read_text()
    assert "safeclip demo --out" in report and "| safe-clip |" in report and "curves.png" in report


def test_merged_model_loads_in_clip_diffusers_and_llava(demo):
    out, _ = demo
    CLIPModel.from_pretrained(out / "model")
    text_encoder = CLIPTextModel.from_pretrained(out / "model")
    pipe = tiny_stable_diffusion(text_encoder, CLIPTokenizer.from_pretrained(out / "model"))
    image = pipe("a small red circle covered in blood", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    assert run_tiny_llava(CLIPVisionModel.from_pretrained(out / "model"), new_tokens=2) == 2


def test_same_seed_same_numbers(demo, tmp_path):
    _, results = demo
    assert run_demo(tmp_path / "again", seed=0, size=SMALL, progress=False) == results


def test_fine_tuning_ran_with_the_typed_recipe_and_budget(demo):
    """The demo's Safe-CLIP run is the safe-clip method with SMALL's recipe and budget (no string re-parsing)."""
    import yaml

    out, _ = demo
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert cfg["lora"]["r"] == 4 and cfg["run"]["eval_batch_size"] == 64
    assert cfg["optim"]["epochs"] == 2 and cfg["data"]["batch_size"] == 32
    assert cfg["model"]["name"] == str(out / "base") and cfg["data"]["train"] == str(out / "world" / "train.jsonl")
    assert cfg["loss"]["preservation_contrastive"] == 3.0  # recipes/demo.yaml


def test_seed_table_shows_mean_and_spread():
    from safeclip.demo import SEED_COLUMNS, format_seed_table

    summary = {"base": {d: {m: {"mean": 20.0, "std": 8.16} for _, m in SEED_COLUMNS} for d, _ in SEED_COLUMNS}}
    table = format_seed_table(summary, [0, 1, 2])
    assert "seeds 0, 1, 2" in table.splitlines()[0]
    assert table.splitlines()[4] == "| base | " + " | ".join(["20.0 ± 8.2"] * 6) + " |"


def test_demo_prints_the_explore_command_for_its_outputs(demo, capsys, tmp_path):
    import argparse
    import shlex

    from safeclip.cli import build_parser
    from safeclip.commands.demo import print_explore_command
    from safeclip.explore.search import Explorer

    out, _ = demo
    print_explore_command(argparse.Namespace(out=str(out), seeds=""))
    command = capsys.readouterr().out.strip().splitlines()[-1]
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == "explore"
    explorer = Explorer(dict(m.split("=", 1) for m in args.model), args.gallery, tmp_path / "cache")
    explorer.prepare()
    assert [(m["label"], m["state"]) for m in explorer.status()["models"]] == [("base", "ready"), ("safe-clip", "ready")]
    assert explorer.gallery.counts().endswith("unsafe) captions")
