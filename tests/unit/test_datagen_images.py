"""Unsafe-image step (seeds, flagged choice, resume), the quality report on hand-made rows, world stand-ins."""

import json

import pytest
from PIL import Image

from safeclip.datagen.images import SEEDS, build_image_flagger, generate_images, image_job, merge_image_parts
from safeclip.datagen.quality import format_quality_markdown, quality_report
from safeclip.judges import build_judge, build_toxicity


def _render(prompt, seed, row):
    return Image.new("RGB", (8, 8), (seed % 256, 0, 0))


def _seed_of(image):
    return {s % 256: s for s in SEEDS}[image.getpixel((0, 0))[0]]


def test_keeps_first_flagged_seed_else_best_rendering_only_what_is_needed(tmp_path):
    rows = [{"id": "a", "unsafe_text": "x"}, {"id": "b", "unsafe_text": "y"}, {"id": "c", "unsafe_text": "z"}]
    scores = {"x": {1234: 0.1, 1999: 0.7, 8185: 0.9}, "y": {1234: 0.2, 1999: 0.4, 8185: 0.3},
              "z": {1234: 0.8, 1999: 0.1, 8185: 0.1}}
    renders = []

    def render(prompt, seed, row):
        renders.append((row["id"], seed))
        return _render(prompt, seed, row)

    part = generate_images(rows, tmp_path, render, lambda ims, ps: [scores[ps[0]][_seed_of(im)] for im in ims],
                           rank=0, world_size=1, progress=False)
    out = {r["id"]: r for r in map(json.loads, part.read_text().splitlines())}
    assert out["a"]["seed"] == SEEDS[1] and out["a"]["flagged"] is True  # first >= 0.5
    assert out["b"]["seed"] == SEEDS[1] and out["b"]["flagged"] is False  # none flagged: highest score
    assert out["c"]["seed"] == SEEDS[0] and out["c"]["renders"] == 1  # flagged at once: no more seeds rendered
    assert renders == [("a", 1234), ("a", 1999), ("b", 1234), ("b", 1999), ("b", 8185), ("c", 1234)]  # 6, not 9
    assert out["a"]["seeds"] == [1234, 1999, 8185] and out["a"]["scores"] == {"1234": 0.1, "1999": 0.7}
    image = Image.open(tmp_path / out["a"]["unsafe_image"])
    assert image.getpixel((0, 0)) == (1999 % 256, 0, 0)  # the kept image is the chosen seed's


def test_black_and_failed_renders_are_skipped_and_a_row_without_image_left_out(tmp_path):
    rows = [{"id": "a", "unsafe_text": "x"}, {"id": "b", "unsafe_text": "y"}]

    def render(prompt, seed, row):
        if row["id"] == "b" or seed == 1234:
            return Image.new("RGB", (8, 8), (0, 0, 0))  # what a safety checker or an fp16 VAE overflow gives
        if seed == 1999:
            return None  # a renderer that gave up
        return _render(prompt, seed, row)

    generate_images(rows, tmp_path, render, lambda ims, ps: [1.0] * len(ims), image_format="webp", rank=0,
                    world_size=1, progress=False)
    merged = [json.loads(x) for x in merge_image_parts(tmp_path, rows).read_text().splitlines()]
    assert [r["id"] for r in merged] == ["a"] and merged[0]["seed"] == 8185
    assert merged[0]["scores"]["1234"] == "black" and merged[0]["scores"]["1999"] == "failed"
    assert merged[0]["unsafe_image"].endswith(".webp") and Image.open(tmp_path / merged[0]["unsafe_image"]).format == "WEBP"
    report = json.loads((tmp_path / "images_report.json").read_text())
    assert report == {"rows": 2, "kept": 1, "flagged": 1, "renders": 6, "all_seeds_failed": 1}


def test_flagger_chosen_by_category(tmp_path):
    from safeclip.datagen.images import CategoryFlagger

    def nudity(ims, ps):
        return [1.0 if _seed_of(im) == 8185 else 0.0 for im in ims]

    def broad(ims, ps):
        return [1.0 if _seed_of(im) == 1999 else 0.0 for im in ims]

    rows = [{"id": "a", "unsafe_text": "x", "category": "nudity"}, {"id": "b", "unsafe_text": "y", "category": "violence"},
            {"id": "c", "unsafe_text": "z", "category": "sexual"}]
    part = generate_images(rows, tmp_path, _render, CategoryFlagger({"nudity": nudity, "sexual": nudity}, broad),
                           rank=0, world_size=1, progress=False)
    kept = {r["id"]: r["seed"] for r in map(json.loads, part.read_text().splitlines())}
    assert kept == {"a": 8185, "b": 1999, "c": 8185}  # NudeNet's choice for nudity/sexual, Q16's for the rest
    routed = build_image_flagger("sexual,nudity=none;none")
    assert isinstance(routed, CategoryFlagger) and set(routed.routes) == {"sexual", "nudity"}
    with pytest.raises(ValueError, match="no image classifier for category"):
        build_image_flagger("nudity=none").for_category("violence")


def test_images_resume_without_duplicates(tmp_path):
    rows = [{"id": f"r{i}", "unsafe_text": f"t{i}"} for i in range(7)]
    calls = []

    def flaky(prompt, seed, row):
        calls.append(row["id"])
        if row["id"] == "r4" and len([c for c in calls if c == "r4"]) == 1:
            raise RuntimeError("killed")
        return _render(prompt, seed, row)

    with pytest.raises(RuntimeError):
        generate_images(rows, tmp_path, flaky, lambda ims, ps: [1.0] * len(ims), rank=0, world_size=1, progress=False)
    assert image_job(tmp_path, rank=0, world_size=1).finished() == {"r0", "r1", "r2", "r3"}
    generate_images(rows, tmp_path, flaky, lambda ims, ps: [1.0] * len(ims), rank=0, world_size=1, progress=False)
    lines = (tmp_path / "images-0.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(r["id"] for r in rows)
    assert calls.count("r0") == 1  # finished rows were not rendered again (flagged at the first seed)
    merged = [json.loads(x) for x in merge_image_parts(tmp_path, rows).read_text().splitlines()]
    assert [r["id"] for r in merged] == [r["id"] for r in rows]
    with pytest.raises(ValueError, match="images not finished yet"):
        merge_image_parts(tmp_path, rows + [{"id": "new", "unsafe_text": "z"}])


def test_image_flagger_specs():
    assert build_image_flagger("none")([1, 2], ["a", "b"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="accepted forms: none, hf:"):
        build_image_flagger("porn-detector")


def test_nudenet_flagger_runs_offline_on_rendered_images():
    from PIL import Image

    pytest.importorskip("nudenet")
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 20, 200))]
    assert build_image_flagger("nudenet")(images, ["a", "b"]) == [0.0, 0.0]  # plain colours: nothing exposed
    assert build_image_flagger("nudenet,none")(images, ["a", "b"]) == [1.0, 1.0]  # any flagger flags


def test_quality_report_hand_made():
    rows = [{"safe_text": "a red circle", "unsafe_text": "a red circle covered in blood", "category": "blood"},
            {"safe_text": "a blue star", "unsafe_text": "a blue star", "category": "blood"},
            {"safe_text": "a cube", "unsafe_text": "a cube with a loaded gun", "category": "weapons"}]
    report = quality_report(rows, [build_judge("lexicon")], build_toxicity("lexicon"))
    assert report["overall"]["n"] == 3
    assert report["overall"]["nsfw_rate[lexicon]"] == pytest.approx(200 / 3)
    assert report["per_category"]["blood"]["nsfw_rate[lexicon]"] == pytest.approx(50.0)
    assert report["per_category"]["weapons"]["nsfw_rate[lexicon]"] == pytest.approx(100.0)
    # toxicity: "a red circle covered in blood" has 2 flagged words of 6 -> min(1, 3 * 2/6) = 1; "a blue star" 0;
    # reported on the paper's 0-100 scale
    assert report["per_category"]["blood"]["toxicity"] == pytest.approx(50.0)
    assert "| overall | 3 |" in format_quality_markdown(report)
    with pytest.raises(ValueError, match="unsafe_text"):
        quality_report([{"safe_text": "x"}], [build_judge("lexicon")])


def test_quality_clip_sim_and_tiny_diffusers_wiring(tiny_clip, tmp_path):
    from safeclip.datagen.demo import tiny_diffusers_pipeline
    from safeclip.datagen.images import diffusers_renderer

    rows = [{"id": "a", "safe_text": "a red circle", "unsafe_text": "a red circle", "category": "blood"},
            {"id": "b", "safe_text": "a red circle", "unsafe_text": "a green star holding knife", "category": "weapons"}]
    report = quality_report(rows, [build_judge("lexicon")], None, tiny_clip)
    assert report["per_category"]["blood"]["clip_sim"] == pytest.approx(1.0, abs=1e-5)  # identical texts
    assert report["per_category"]["weapons"]["clip_sim"] < 0.999
    render = diffusers_renderer(tiny_diffusers_pipeline(tiny_clip), steps=2, height=32, width=32, device="cpu")
    part = generate_images(rows, tmp_path, render, lambda ims, ps: [0.0] * len(ims), seeds=(1234, 1999), rank=0,
                           world_size=1, progress=False)
    first = json.loads(part.read_text().splitlines()[0])
    image = Image.open(tmp_path / first["unsafe_image"])
    assert image.size == (32, 32)
    again = render("a red circle", 1234, {})
    assert list(again.getdata()) == list(render("a red circle", 1234, {}).getdata())  # seeded


def test_quality_image_side_and_unreadable_verdicts(tiny_clip, tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i, (text, cat) in enumerate([("a red circle covered in blood", "blood"), ("a cube with a gun", "weapons"),
                                     ("a star with a knife", "weapons")]):
        Image.new("RGB", (32, 32), (60 * i, 30, 30)).save(tmp_path / "images" / f"{i}.png")
        rows.append({"safe_text": "a shape", "unsafe_text": text, "category": cat, "unsafe_image": f"images/{i}.png"})

    class LLM:
        name = "openai:m@x"

        def __call__(self, texts):
            return [True, None, False]  # the second reply was unreadable

    class Dark:
        name = "dark"

        def __call__(self, paths):
            return [Image.open(p).getpixel((0, 0))[0] < 100 for p in paths]

    report = quality_report(rows, [LLM()], None, tiny_clip, image_judges=[Dark()], image_root=tmp_path,
                            roles={"openai:m@x": "GPT-3.5"})
    overall = report["overall"]
    assert overall["nsfw_rate[openai:m@x]"] == pytest.approx(50.0) and overall["unreadable[openai:m@x]"] == 1
    assert overall["nsfw_rate[image:dark]"] == pytest.approx(200 / 3)  # red 0 and 60 are dark, 120 is not
    assert report["per_category"]["weapons"]["nsfw_rate[image:dark]"] == pytest.approx(50.0)
    assert -1.0 <= overall["image_text_clip_sim"] <= 1.0 and "image_text_clip_sim" in report["per_category"]["blood"]
    assert "`openai:m@x` plays GPT-3.5" in format_quality_markdown(report)
