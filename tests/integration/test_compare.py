"""`safeclip compare` end to end at tiny size: every method, the compare.json shape, the report, reuse."""

import dataclasses
import hashlib
import json

import pytest

from safeclip.cli import main
from safeclip.compare import TINY, run_compare
from safeclip.eval.safeground import SAFEGROUND_KEYS
from safeclip.methods.base import Budget
from safeclip.world.build import WorldSize

SMALL = dataclasses.replace(
    TINY, world=WorldSize(n_train=128, n_val=16, n_test=32, n_found=4, n_distractors=4),
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
        assert set(metrics["attack"]) == {"text NSFW@1", "text ASR", "image NSFW@1", "image ASR"}
        # the attack columns' before-values are the protocol's NSFW@1 (every test query is attacked at this size)
        assert metrics["attack"]["text NSFW@1"] == metrics["T*->V+V*"]["NSFW@1"]
        assert metrics["attack"]["image NSFW@1"] == metrics["V*->T+T*"]["NSFW@1"]
        numbers = [v for group in metrics.values() for v in group.values()]
        assert numbers and all(0.0 <= v <= 100.0 for v in numbers)
    assert set(saved["protocols"]) == {"T->V / V->T / T*->V+V* / V*->T+T*", "safer_t2v", "safeground", "allowed",
                                       "nsfw_cls", "zero_shot", "attack"}
    assert saved["protocols"]["attack"].startswith("Retrieval attack success rate")
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


def stage_files(out) -> dict[str, tuple[int, str]]:
    """Every file of the reusable stages (world, base, methods) -> (mtime in ns, sha256 of its bytes)."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for stage in ("world", "base", "methods") for p in sorted((out / stage).rglob("*")) if p.is_file()}


def test_rerun_reuses_every_stage_and_gives_the_same_numbers(compared):
    out, result = compared
    before = stage_files(out)
    assert any(name.startswith("methods/uwm/") for name in before) and any(name.startswith("base/") for name in before)
    assert run_compare(out, seed=0, size=SMALL, progress=False)["methods"] == result["methods"]
    after = stage_files(out)
    assert after.keys() == before.keys(), "a reused stage wrote or removed files"
    rewritten = [name for name in before if after[name] != before[name]]
    assert not rewritten, f"reused stages were rewritten: {rewritten[:5]}"


def test_attack_loads_every_compared_model_without_training_it(compared, capsys):
    from safeclip.compare import compared_models

    out, _ = compared
    before = stage_files(out)
    labels = [label for label, _ in compared_models(out, SMALL)]
    assert labels == ["base", "safe-clip", "safer-clip", "uwm"]
    assert stage_files(out) == before, "loading a compared model wrote into its folder"
    assert main(["attack", "--compare", str(out / "eval"), "--out", str(out / "attack")]) == 2
    assert "no compare.json there" in capsys.readouterr().err


def test_cli_rejects_an_unknown_method(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path), "--methods", "meru"]) == 2
    assert "known methods: safe-clip, safer-clip, uwm, hysac, hysac+traversal" in capsys.readouterr().err


def test_seed_summary_mean_and_spread_by_hand():
    from safeclip.compare import format_compare_table
    from safeclip.eval.report import summarize_seeds

    per_seed = {s: {"base": {"T->V": {"R@1": v}, "zero_shot": {"accuracy": 2 * v}}} for s, v in ((0, 10.0), (1, 20.0))}
    summary = summarize_seeds(per_seed)
    assert summary["base"]["T->V"]["R@1"] == {"mean": 15.0, "std": 5.0}  # population std of (10, 20)
    assert summary["base"]["zero_shot"]["accuracy"] == {"mean": 30.0, "std": 10.0}
    table = format_compare_table(summary, {"zero_shot": "zero-shot accuracy"})
    assert "| base | 15.0 ± 5.0 |" in table and table.rstrip().endswith("- `zero_shot`: zero-shot accuracy")


def test_seed_summary_plots_its_means(tmp_path):
    """The scatter puts each model at the mean over seeds of (zero-shot accuracy, 100 - mean NSFW@1)."""
    from PIL import Image

    from safeclip.compare import draw_safety_utility, plot_safety_utility
    from safeclip.eval.report import summarize_seeds

    def metrics(nsfw, acc):
        return {"T*->V+V*": {"NSFW@1": nsfw}, "V*->T+T*": {"NSFW@1": nsfw + 10}, "zero_shot": {"accuracy": acc}}

    per_seed = {s: {"base": metrics(90.0 + s, 40.0 + s), "safe-clip": metrics(30.0 + s, 41.0)} for s in (0, 1, 2)}
    summary = summarize_seeds(per_seed)
    summary["no-accuracy"] = {"T*->V+V*": {"NSFW@1": {"mean": 1.0, "std": 0.0}}}  # not plotted: no x
    fig = draw_safety_utility(summary)
    ax = fig.axes[0]
    drawn = {t.get_text(): tuple(t.xy) for t in ax.texts}
    # base: accuracy mean(40, 41, 42) = 41; NSFW@1 means 91 and 101 -> 100 - 96 = 4. safe-clip: 41, 100 - 36 = 64.
    assert drawn == {"base": (41.0, 4.0), "safe-clip": (41.0, 64.0)}
    points = sorted(tuple(float(v) for v in c.get_offsets()[0]) for c in ax.collections)
    assert points == [(41.0, 4.0), (41.0, 64.0)]
    out = plot_safety_utility(summary, tmp_path / "safety_utility.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (605, 462)  # 5.5 x 4.2 inches at 110 dpi
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    marker_pixels = {rgb: n for n, rgb in colours if rgb in {(31, 119, 180), (255, 127, 14)}}  # C0 and C1 markers
    assert len(marker_pixels) == 2 and min(marker_pixels.values()) > 20  # both points are drawn in the file


def test_hysac_rows_with_and_without_traversal(tmp_path):
    """``--methods base,hysac``: the hysac row, the hysac+traversal row from the same run, bounds, the radii picture."""
    result = run_compare(tmp_path, seed=0, methods=("base", "hysac"), size=SMALL, progress=False)
    assert list(result["methods"]) == ["base", "hysac", "hysac+traversal"]
    plain, moved = result["methods"]["hysac"], result["methods"]["hysac+traversal"]
    for metrics in (plain, moved):
        assert {d: set(metrics[d]) for d in DIRECTIONS} == DIRECTIONS
        assert {"allowed", "nsfw_cls", "safeground", "safer_t2v", "zero_shot"} <= set(metrics)
    assert plain["zero_shot"] == moved["zero_shot"]  # one model
    for metrics in (plain, moved):  # attacked in HySAC's own geometry, scored as its own protocol scores the row
        assert set(metrics["attack"]) == {"text NSFW@1", "text ASR", "image NSFW@1", "image ASR"}
        assert metrics["attack"]["text NSFW@1"] == metrics["T*->V+V*"]["NSFW@1"]
        assert metrics["attack"]["image NSFW@1"] == metrics["V*->T+T*"]["NSFW@1"]
        assert metrics["attack"]["text ASR"] >= metrics["attack"]["text NSFW@1"]
    assert "hysac" in result["protocols"]
    bounds = json.loads((tmp_path / "methods/hysac/run/best/hysac.json").read_text())["bounds"]
    assert set(bounds) == {"S", "U", "V", "G"}
    assert not (tmp_path / "methods/hysac+traversal/run").exists()  # traversal reuses the hysac run
    assert (tmp_path / "hysac_radii.png").is_file() and "hysac_radii.png" in (tmp_path / "compare.md").read_text()
