"""`safeclip hysac` on tiny models: import the authors' layout, bounds from a named split, classify, export."""

import json

import pytest
import torch

from safeclip import hyperbolic as H
from safeclip.cli import main
from safeclip.hysac.model import load_hysac
from safeclip.hysac.traversal import BOUND_KEYS
from safeclip.models.clip import encode_images, encode_texts
from tests.fixtures import write_quadruplets
from tests.unit.test_hysac_model import authors_checkpoint


@pytest.fixture()
def imported(tiny_clip_dir, tmp_path):
    authors_checkpoint(tiny_clip_dir, tmp_path / "hysac_model.pth", old_peft_names=True)
    assert main(["hysac", "import", "--checkpoint", str(tmp_path / "hysac_model.pth"), "--base", str(tiny_clip_dir),
                 "--out", str(tmp_path / "model")]) == 0
    return tmp_path / "model"


def test_bounds_command_measures_the_named_split(imported, tmp_path):
    data = write_quadruplets(tmp_path / "data", 10, name="val.jsonl")
    assert main(["hysac", "bounds", "--model", str(imported), "--data", str(data), "--out", str(tmp_path / "b.json"),
                 "--into"]) == 0
    bounds = json.loads((tmp_path / "b.json").read_text())
    assert set(bounds) == set(BOUND_KEYS)
    model = load_hysac(imported)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    radii = H.origin_distance(encode_texts(model.text, model.tokenizer, [r["safe_text"] for r in rows]).double(),
                              model.curvature())
    assert bounds["S"]["avg"] == pytest.approx(float(radii.mean()), rel=1e-4)
    assert bounds["S"]["up_95"] == pytest.approx(float(torch.quantile(radii, 0.95)), rel=1e-4)
    assert model.bounds == bounds  # --into stored them with the model
    assert json.loads((imported / "hysac.json").read_text())["bounds_split"] == str(data)


def test_classify_and_export_commands(imported, tmp_path, tiny_clip_dir):
    val = write_quadruplets(tmp_path / "data", 8, name="val.jsonl", seed=1)
    test = write_quadruplets(tmp_path / "data", 8, name="test.jsonl", seed=2)
    assert main(["hysac", "classify", "--model", str(imported), "--val", str(val), "--test", str(test),
                 "--out", str(tmp_path / "nsfw.json")]) == 0
    out = json.loads((tmp_path / "nsfw.json").read_text())
    assert out["score"] == "root distance" and set(out["metrics"]) == {"text", "image"}
    assert set(out["metrics"]["text"]) == {"accuracy", "FPR", "FNR", "AUROC", "threshold"}
    assert main(["hysac", "classify", "--model", str(tiny_clip_dir), "--val", str(val), "--test", str(test),
                 "--out", str(tmp_path / "nsfw_base.json")]) == 0
    assert json.loads((tmp_path / "nsfw_base.json").read_text())["score"] == "unsafe prototype"
    assert main(["hysac", "export", "--model", str(imported), "--out", str(tmp_path / "again")]) == 0
    a, b = load_hysac(imported), load_hysac(tmp_path / "again")
    from tests.fixtures import draw

    torch.testing.assert_close(encode_images(a.vision, a.image_processor, [draw("red", "circle", True)]),
                               encode_images(b.vision, b.image_processor, [draw("red", "circle", True)]))


def test_bounds_command_names_a_non_hysac_model(tiny_clip_dir, tmp_path, capsys):
    data = write_quadruplets(tmp_path / "data", 4)
    assert main(["hysac", "bounds", "--model", str(tiny_clip_dir), "--data", str(data), "--out", str(tmp_path / "b.json")]) == 2
    assert "not a HySAC model" in capsys.readouterr().err
