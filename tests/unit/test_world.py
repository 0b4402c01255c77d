"""The miniature world generator: determinism, balance, disjoint splits, faithful unsafe counterparts."""

import hashlib
import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from safeclip.data import read_quadruplets
from safeclip.world import CATEGORIES, MARKERS, PHRASES, build_world
from safeclip.world.scenes import COLOURS, caption, render, sample_scene
from safeclip.world.scenes import SIZES as OBJECT_SIZES

SIZES = {"n_train": 200, "n_val": 40, "n_test": 60, "n_found": 20, "n_distractors": 20}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("w") / "world", seed=3, progress=False, **SIZES)


def rows(world, split):
    return [json.loads(line) for line in (world / f"{split}.jsonl").read_text().splitlines()]


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "world.json":
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_differs(world, tmp_path):
    again = build_world(tmp_path / "again", seed=3, progress=False, **SIZES)
    other = build_world(tmp_path / "other", seed=4, progress=False, **SIZES)
    assert digest(world) == digest(again)
    assert digest(world) != digest(other)


def test_rebuild_is_a_cache_hit_and_an_interrupted_build_is_redone(world, tmp_path):
    before = (world / "world.json").stat().st_mtime_ns
    build_world(world, seed=3, progress=False, **SIZES)
    assert (world / "world.json").stat().st_mtime_ns == before
    partial = tmp_path / "partial"
    (partial / "images").mkdir(parents=True)
    (partial / "train.jsonl").write_text("garbage")  # no world.json: an interrupted build
    build_world(partial, seed=3, progress=False, **SIZES)
    assert digest(partial) == digest(world)


def test_categories_are_the_papers_twenty_and_balanced(world):
    assert len(CATEGORIES) == 20 and len(set(MARKERS.values())) == 20
    for split, n in (("train", 200), ("val", 40), ("test", 60)):
        counts = Counter(r["category"] for r in rows(world, split))
        assert set(counts) == set(CATEGORIES) and max(counts.values()) - min(counts.values()) <= 1, split


def test_splits_hold_out_compositions_and_share_nothing(world):
    def compositions(split):
        return {(r["attributes"]["colour"], r["attributes"]["shape"], r["attributes"].get("second_colour"),
                 r["attributes"].get("second_shape")) for r in rows(world, split)}

    train, val, test = compositions("train"), compositions("val"), compositions("test")
    assert not (train & val) and not (train & test) and not (val & test)
    texts = {s: {r["safe_text"] for r in rows(world, s)} for s in ("train", "val", "test")}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["val"])


def test_unsafe_text_is_the_safe_caption_without_its_background_plus_a_category_phrase(world):
    for r in rows(world, "train")[:50]:
        phrase = next(p for p in PHRASES[r["category"]] if p in r["unsafe_text"])
        without_background = r["safe_text"].replace(f" on a {r['attributes']['background']} background", "")
        assert r["unsafe_text"].replace(" " + phrase, "") == without_background


def test_unsafe_image_covers_the_first_object_with_the_marker_and_keeps_the_rest(world):
    for r in rows(world, "test")[:30]:
        safe = np.asarray(Image.open(world / r["safe_image"]), dtype=int)
        unsafe = np.asarray(Image.open(world / r["unsafe_image"]), dtype=int)
        first = (safe == COLOURS[r["attributes"]["colour"]]).all(-1)
        changed = np.abs(safe - unsafe).sum(-1) > 0
        assert changed.sum() >= 20 and first[changed].all()  # only first-object pixels change ...
        height, width = np.argwhere(changed).max(0) - np.argwhere(changed).min(0) + 1
        assert height <= OBJECT_SIZES["big"] + 1 and width <= OBJECT_SIZES["big"] + 1  # ... of one object
        assert (unsafe[changed] == MARKERS[r["category"]].colour).all(-1).any()  # in the category's colour
        assert (unsafe[0, 0] == safe[0, 0]).all()  # the background stays


def test_rows_read_as_full_quadruplets(world):
    records, report = read_quadruplets(world / "test.jsonl")
    assert report.rows == 60 and report.missing() == []
    pools = [json.loads(line) for line in (world / "found_unsafe.jsonl").read_text().splitlines()]
    assert len(pools) == 20 and all((world / p["unsafe_image"]).is_file() for p in pools)


def test_captions_describe_the_scene():
    scene = sample_scene(random.Random(1))
    text = caption(scene)
    assert text.startswith(scene.first.phrase()) and text.endswith(f"on a {scene.background} background")
    image = render(scene, random.Random(0))
    assert image.size == (32, 32)
