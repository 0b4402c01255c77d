"""The one evaluation entry point (embed, then score by protocol), its results object, the table writer,
the seed summary, and the typed settings the demo and compare pass to the safe-clip method."""

import dataclasses
import json

import pytest
import torch

from safeclip.data import read_quadruplets
from safeclip.eval.embed import embed_quadruplets
from safeclip.eval.evaluation import EvalResults, embed_records, evaluate, score
from safeclip.eval.report import markdown_table, metric_table, summarize_seeds
from safeclip.eval.retrieval import format_markdown_table, safe_clip_protocol
from safeclip.eval.safeground import safeground
from safeclip.eval.safer_protocol import safer_t2v
from safeclip.models.clip import load_clip
from tests.fixtures import write_quadruplets


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return read_quadruplets(write_quadruplets(tmp_path_factory.mktemp("quads"), 12, seed=0))[0]


def test_evaluate_equals_each_protocol_on_the_embeddings(tiny_clip_dir, records):
    """Every group is what the protocol functions give on embeddings computed the long way."""
    bundle = load_clip(tiny_clip_dir)
    results = evaluate({"base": bundle}, records, protocols=("safe-clip", "safer-t2v", "safeground"), batch_size=5)
    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records)
    expected = {**safe_clip_protocol(emb["safe_text"], emb["safe_image"], emb["unsafe_text"], emb["unsafe_image"]),
                "safer_t2v": safer_t2v(emb["unsafe_text"], emb["safe_image"]),
                "safeground": safeground(emb["safe_text"], emb["unsafe_text"], emb["safe_image"], emb["unsafe_image"])}
    assert results.models == {"base": expected}
    assert list(results.models["base"]) == ["T->V", "V->T", "T*->V+V*", "V*->T+T*", "safer_t2v", "safeground"]
    assert results.embeddings == {}  # kept only when asked


def test_embedding_and_scoring_are_separate_steps(tiny_clip_dir, records):
    bundle = load_clip(tiny_clip_dir)
    emb = embed_records(bundle, records, protocols=("safer-t2v",), device="cpu")
    assert set(emb) == {"unsafe_text", "safe_image"}  # only what the protocol reads
    assert all(v.dtype == torch.float32 and v.shape[0] == 12 for v in emb.values())
    assert score(emb, ("safer-t2v",), device="cpu") == {"safer_t2v": safer_t2v(emb["unsafe_text"], emb["safe_image"])}
    with pytest.raises(ValueError, match="safeground protocol needs"):
        score(emb, ("safeground",))


def test_missing_modalities_fail_by_name_or_are_skipped(tiny_clip_dir, records):
    bundle = load_clip(tiny_clip_dir)
    text_only = [dataclasses.replace(r, safe_image=None, unsafe_image=None) for r in records]
    with pytest.raises(ValueError, match="has no safe_image; the safe-clip protocol needs safe_text and safe_image"):
        evaluate(bundle, text_only)
    skipped = evaluate(bundle, text_only, protocols=("safe-clip", "safeground"), skip_missing=True)
    assert skipped.models == {"model": {}} and skipped.protocols == ()
    with pytest.raises(ValueError, match="unknown evaluation protocol 'hysac'; known protocols: safe-clip"):
        evaluate(bundle, records, protocols=("hysac",))


def test_results_write_the_documented_files(tiny_clip_dir, records, tmp_path):
    bundle = load_clip(tiny_clip_dir)
    results = evaluate({"a": bundle}, records, keep_embeddings=True)
    results.update(evaluate({"b|c": bundle}, records[:6]))
    assert list(results.models) == ["a", "b|c"] and set(results.embeddings) == {"a"}
    json_path, md_path = results.write(tmp_path, stem="res")
    assert json.loads(json_path.read_text()) == {"protocol": "safe-clip", "rows": 6, "models": results.models}
    assert md_path.read_text() == format_markdown_table(results.models, "safe-clip")
    assert "| b\\|c |" in md_path.read_text()
    several = EvalResults(("safe-clip", "safer-t2v"), {"m": {"T->V": {"R@1": 50.0}, "safer_t2v": {"R@1": 25.0}}})
    assert set(several.to_json()["protocols"]) == {"T->V / V->T / T*->V+V* / V*->T+T*", "safer_t2v"}
    assert "| m | 50.0 | 25.0 |" in several.table()


def test_markdown_table_by_hand():
    table = markdown_table("model", ["x", "y"], {"a": [1.25, None], "b|c": [{"mean": 2.0, "std": 0.25}, "7 (3)"]})
    assert table == ("| model | x | y |\n|---|---:|---:|\n| a | 1.2 | - |\n| b\\|c | 2.0 ± 0.2 | 7 (3) |\n")
    assert metric_table({"a": {"g": {"m": 3.0}}}, [("g", "m"), ("g", "n")]) == (
        "| model | g m | g n |\n|---|---:|---:|\n| a | 3.0 | - |\n")
    with pytest.raises(ValueError, match="row 'a' has 1 cells for 2 columns"):
        markdown_table("model", ["x", "y"], {"a": [1.0]})


def test_seed_summary_by_hand():
    per_seed = {s: {"base": {"T->V": {"R@1": v}}} for s, v in ((0, 10.0), (1, 20.0), (2, 30.0))}
    summary = summarize_seeds(per_seed)
    assert summary["base"]["T->V"]["R@1"]["mean"] == 20.0
    assert summary["base"]["T->V"]["R@1"]["std"] == pytest.approx((200 / 3) ** 0.5, abs=1e-12)  # population std
    with pytest.raises(ValueError, match="at least one seed"):
        summarize_seeds({})


def test_seed_summary_with_a_missing_or_none_cell():
    """A cell one seed lacks (no attack group) or holds as None is summarised over the seeds that have a number,
    with their count; a cell no seed has a number for is None. The union of keys is kept, not the first seed's."""
    per_seed = {0: {"base": {"T->V": {"R@1": 10.0}, "attack": {"ASR": None}}, "hysac": {"T->V": {"R@1": 1.0}}},
                1: {"base": {"T->V": {"R@1": 20.0}, "attack": {"ASR": 40.0}}, "hysac": {"T->V": {"R@1": None}}},
                2: {"base": {"T->V": {"R@1": 30.0}, "attack": {"ASR": 60.0, "image ASR": None}},
                    "hysac": {"T->V": {"R@1": 3.0}}, "uwm": {"T->V": {"R@1": 7.0}}}}
    summary = summarize_seeds(per_seed)
    assert summary["base"]["T->V"]["R@1"] == {"mean": 20.0, "std": pytest.approx((200 / 3) ** 0.5)}  # no "n": all seeds
    assert summary["base"]["attack"]["ASR"] == {"mean": 50.0, "std": 10.0, "n": 2}  # seeds 1 and 2
    assert summary["base"]["attack"]["image ASR"] is None  # no seed has a number
    assert summary["hysac"]["T->V"]["R@1"] == {"mean": 2.0, "std": 1.0, "n": 2}
    assert summary["uwm"]["T->V"]["R@1"] == {"mean": 7.0, "std": 0.0, "n": 1}  # a model of the last seed only
    table = metric_table(summary, [("T->V", "R@1"), ("attack", "ASR"), ("attack", "image ASR")])
    assert "| base | 20.0 ± 8.2 | 50.0 ± 10.0 (n=2) | - |" in table and "| uwm | 7.0 ± 0.0 (n=1) | - | - |" in table


def test_safe_clip_config_is_typed_and_layered(tmp_path):
    """Inputs and budget are typed fields on the recipe (a folder named 'on' stays 'on'); overrides come last."""
    from safeclip.config import TrainConfig
    from safeclip.methods.base import Budget, MethodInputs
    from safeclip.methods.safe_clip import recipe_config, safe_clip_config

    recipe = recipe_config()
    recipe.lora.r = 4
    inputs = MethodInputs(base="on", train="no", val="null", out_dir=tmp_path / "m", seed=3,
                          budget=Budget(epochs=2, batch_size=32, max_rows=7), settings=recipe, progress=False,
                          overrides=["loss.temperature=0.5", "optim.epochs=5"])
    cfg = safe_clip_config(inputs)
    assert (cfg.model.name, cfg.data.train, cfg.data.val) == ("on", "no", "null")
    assert cfg.run.out_dir == str(tmp_path / "m" / "run") and cfg.run.seed == 3 and cfg.run.progress is False
    assert (cfg.data.batch_size, cfg.data.max_rows, cfg.lora.r) == (32, 7, 4)
    assert cfg.loss.temperature == 0.5 and cfg.optim.epochs == 5  # overrides after the budget
    assert recipe.model.name != "on"  # the caller's recipe is not changed
    assert safe_clip_config(dataclasses.replace(inputs, settings=None, overrides=[])).lora.r == 16  # recipes/demo.yaml
    with pytest.raises(ValueError, match="must be a TrainConfig"):
        safe_clip_config(dataclasses.replace(inputs, settings={"lora": {"r": 4}}))
    assert isinstance(cfg, TrainConfig)


def test_pipeline_sizes_load_from_yaml_and_dotted_overrides(tmp_path):
    from safeclip.compare import CompareSize
    from safeclip.config import load_config
    from safeclip.demo import DemoSize

    path = tmp_path / "size.yaml"
    path.write_text("world:\n  n_train: 300\npretrain:\n  epochs: 1\nbudget:\n  batch_size: 16\n")
    size = load_config(path, ["safe_clip.lora.r=8", "world.n_test=40"], cls=DemoSize)
    assert (size.world.n_train, size.world.n_test, size.pretrain.epochs, size.budget.batch_size) == (300, 40, 1, 16)
    assert size.safe_clip.lora.r == 8 and size.safe_clip.loss.preservation_contrastive == 3.0
    compare = load_config(None, ["eval_rows=10", "budget.calibration_rows=64"], cls=CompareSize)
    assert compare.eval_rows == 10 and compare.budget.calibration_rows == 64
