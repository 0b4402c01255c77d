"""``safeclip datagen demo --size tiny`` end to end: Table 1 shape, cached stages, generated quadruplets."""

import json
import warnings

import pytest

pytest.importorskip("trl")


def test_datagen_demo_tiny(tmp_path):
    from safeclip.cli import main

    out = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:  # a clean run warns about nothing a user would see
        warnings.simplefilter("always")
        assert main(["datagen", "demo", "--out", str(out), "--size", "tiny", "--no-progress"]) == 0
    shown = [f"{w.category.__name__}: {w.message}"[:200] for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert not shown, shown
    table = json.loads((out / "table1.json").read_text())
    assert set(table["rows"]) == {"base", "sft", "dpo"}
    for row in table["rows"].values():
        assert set(row) >= {"nsfw_rate", "clip_sim", "rank"}
        assert 0.0 <= row["nsfw_rate"] <= 100.0 and -1.0 <= row["clip_sim"] <= 1.0
        assert row["rank"] == pytest.approx(row["clip_sim"] + row["nsfw_rate"] / 100, abs=1e-4)  # Eq. 3 means
    assert "| base |" in (out / "table1.md").read_text()
    for stage in ("sft", "dpo"):
        assert (out / stage / "adapter" / "adapter_model.safetensors").is_file()
    quads = [json.loads(x) for x in (out / "generated" / "quadruplets.jsonl").read_text().splitlines()]
    assert quads and all((out / "generated" / q["unsafe_image"]).is_file() and q["seeds"] == [1234, 1999, 8185]
                         for q in quads)
    assert (out / "generated" / "quality.md").is_file()
    assert len((out / "diffusers" / "images-0.jsonl").read_text().splitlines()) == 2
    # rerun: every stage is cached, the table is reproduced
    mtime = (out / "sft" / "meta.json").stat().st_mtime
    assert main(["datagen", "demo", "--out", str(out), "--size", "tiny", "--no-progress"]) == 0
    assert (out / "sft" / "meta.json").stat().st_mtime == mtime
    assert json.loads((out / "table1.json").read_text())["rows"] == table["rows"]


def test_datagen_demo_rejects_bad_size_and_half_reuse(tmp_path):
    from safeclip.cli import main

    assert main(["datagen", "demo", "--out", str(tmp_path / "x"), "--size", "huge"]) == 2
    assert main(["datagen", "demo", "--out", str(tmp_path / "x"), "--world", str(tmp_path)]) == 2
