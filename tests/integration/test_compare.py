"""`safeclip compare` end to end at tiny size: every method, the compare.json shape, the report, reuse."""

import dataclasses
import json

import pytest

from safeclip.cli import main
from safeclip.compare import TINY, run_compare
from safeclip.eval.safeground import SAFEGROUND_KEYS
from safeclip.methods.base import Budget

SMALL = dataclasses.replace(
    TINY, world={"n_train": 128, "n_val": 16, "n_test": 32, "n_found": 4, "n_distractors": 4},
    budget=Budget(epochs=2, batch_size=32, calibration_rows=32))
RECALLS = {"R@1", "R@5", "R@10", "R@20"}
DIRECTIONS = {"T->V": RECALLS, "V->T": RECALLS, "T*->V+V*": RECALLS | {"NSFW@1"}, "V*->T+T*": RECALLS | {"NSFW@1"}}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, run_compare(out, seed=0, size=SMALL, progress=False)


def test_compare_json_has_the_documented_shape(compared):
    out, result = compared
    saved = json.loads((out / "compare.json").read_text())
    assert saved["methods"] == result["methods"]
    assert set(saved["methods"]) == {"base", "safe-clip", "safer-clip", "uwm"}
    for metrics in saved["methods"].values():
        assert {d: set(metrics[d]) for d in DIRECTIONS} == DIRECTIONS
        assert set(metrics["safeground"]) == set(SAFEGROUND_KEYS)
        assert set(metrics["safer_t2v"]) == {"R@1", "R@5", "R@10"}
        assert set(metrics["zero_shot"]) == {"accuracy", "shape", "colour"}
        numbers = [v for group in metrics.values() for v in group.values()]
        assert numbers and all(0.0 <= v <= 100.0 for v in numbers)
    assert set(saved["protocols"]) == {"T->V / V->T / T*->V+V* / V*->T+T*", "safer_t2v", "safeground", "zero_shot"}
    # The methods really changed the model: no method reproduces the base's numbers exactly.
    base = saved["methods"]["base"]
    assert all(saved["methods"][m] != base for m in ("safe-clip", "safer-clip", "uwm"))


def test_every_stage_has_its_folder_and_the_report(compared):
    out, _ = compared
    for path in ("world/world.json", "base/base.json", "methods/safe-clip/run/summary.json",
                 "methods/safer-clip/summary.json", "methods/safer-clip/targets.safetensors",
                 "methods/uwm/edit.safetensors", "methods/uwm/uwm.json", "eval/uwm.json",
                 "compare.md", "safety_utility.png"):
        assert (out / path).is_file(), path
    report = (out / "compare.md").read_text()
    assert "safeclip compare --out" in report and "| safer-clip |" in report and "safety_utility.png" in report


def test_rerun_reuses_every_stage_and_gives_the_same_numbers(compared):
    out, result = compared
    assert run_compare(out, seed=0, size=SMALL, progress=False)["methods"] == result["methods"]


def test_cli_rejects_an_unknown_method(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path), "--methods", "hysac"]) == 2
    assert "known methods: safe-clip, safer-clip, uwm" in capsys.readouterr().err


def test_seed_summary_mean_and_spread_by_hand():
    from safeclip.compare import format_compare_table, summarize

    per_seed = {s: {"methods": {"base": {"T->V": {"R@1": v}, "zero_shot": {"accuracy": 2 * v}}}} for s, v in ((0, 10.0), (1, 20.0))}
    summary = summarize(per_seed)
    assert summary["base"]["T->V"]["R@1"] == {"mean": 15.0, "std": 5.0}  # population std of (10, 20)
    assert summary["base"]["zero_shot"]["accuracy"] == {"mean": 30.0, "std": 10.0}
    assert "| base | 15.0 ± 5.0 |" in format_compare_table(summary)


def test_seed_summary_plots_its_means(tmp_path):
    from safeclip.compare import plot_safety_utility, summarize

    def metrics(nsfw, acc):
        return {"T*->V+V*": {"NSFW@1": nsfw}, "V*->T+T*": {"NSFW@1": nsfw + 10}, "zero_shot": {"accuracy": acc}}

    per_seed = {s: {"methods": {"base": metrics(90.0 + s, 40.0), "safe-clip": metrics(30.0 + s, 41.0)}} for s in (0, 1, 2)}
    out = plot_safety_utility(summarize(per_seed), tmp_path / "safety_utility.png")
    assert out.stat().st_size > 1000
