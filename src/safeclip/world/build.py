"""Build the miniature ViSU world on disk: quadruplet splits, a found-unsafe pool and distractors.

    safeclip world build --out world --seed 0

Writes, in the project's quadruplet table format (image paths relative to the folder)::

    world/train.jsonl val.jsonl test.jsonl   quadruplets {id, safe_text, unsafe_text, safe_image, unsafe_image, category, attributes}
    world/found_unsafe.jsonl                 unsafe images of scenes paired with no caption {id, unsafe_image, category}
    world/distractors.jsonl                  safe images and captions of other scenes {id, safe_image, safe_text}
    world/images/*.png  world/world.json     (world.json is written last: its presence marks a complete build)

As in the paper's Table 3 (1k unsafe images per source, 10k LAION distractors), the distractors
outnumber the found unsafe images ten to one by default.

Splits hold out compositions: a colour-shape combination of a scene (with its partner's) occurs in
one split only. Categories are balanced: quadruplet i of a split gets category i mod 20 (shuffled).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from safeclip.checkpoint import write_json_atomic
from safeclip.config import Settings, setting
from safeclip.world.categories import CATEGORIES, MARKERS, PHRASES
from safeclip.world.scenes import Scene, Thing, caption, render, sample_scene, unsafe_caption

WORLD_VERSION = 2


@dataclass
class WorldSize(Settings):
    """How many items each split and pool of the world holds (``build_world(..., **asdict(size))``)."""

    n_train: int = setting(10000, "Training quadruplets.", ge=1)
    n_val: int = setting(500, "Validation quadruplets.", ge=1)
    n_test: int = setting(1000, "Test quadruplets.", ge=1)
    n_found: int = setting(1000, "Found unsafe images, paired with no caption (paper Table 3's unsafe sources).", ge=1)
    n_distractors: int = setting(10000, "Safe distractor images and captions (paper Table 3's LAION distractors).", ge=1)


DEFAULT_SIZES = asdict(WorldSize())


def composition_split(scene: Scene, seed: int) -> str:
    """Assign a composition to train (80%), val (7%) or test (13%) by a seeded hash."""
    digest = hashlib.sha256(f"{seed}:{scene.composition}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if u < 0.80 else "val" if u < 0.87 else "test"


def attributes(scene: Scene) -> dict:
    attrs = {"shape": scene.first.shape, "colour": scene.first.colour, "size": scene.first.size,
             "background": scene.background, "objects": 1 if scene.second is None else 2}
    if scene.second is not None:
        attrs.update(relation=scene.relation, second_shape=scene.second.shape, second_colour=scene.second.colour,
                     second_size=scene.second.size)
    return attrs


def scene_from_attributes(attrs: dict) -> Scene:
    """The scene a row's ``attributes`` describe (the inverse of :func:`attributes`)."""
    first = Thing(attrs["size"], attrs["colour"], attrs["shape"])
    if attrs["objects"] == 1:
        return Scene(first, attrs["background"])
    second = Thing(attrs["second_size"], attrs["second_colour"], attrs["second_shape"])
    return Scene(first, attrs["background"], attrs["relation"], second)


def _scenes_for(split: str, count: int, seed: int, rng: random.Random, taken: set[str]) -> list[Scene]:
    scenes = []
    while len(scenes) < count:
        scene = sample_scene(rng)
        key = repr(scene)
        if composition_split(scene, seed) == split and key not in taken:
            taken.add(key)
            scenes.append(scene)
    return scenes


def _quadruplet_rows(split: str, scenes: list[Scene], seed: int, images: Path, bar) -> list[dict]:
    rng = random.Random(f"{seed}:{split}:rows")
    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(len(scenes))]
    rng.shuffle(categories)
    rows = []
    for i, (scene, category) in enumerate(zip(scenes, categories)):
        phrase = rng.choice(PHRASES[category])
        layout_seed = rng.randrange(2**31)
        safe = render(scene, random.Random(layout_seed))
        unsafe = render(scene, random.Random(layout_seed), marker=MARKERS[category])  # same layout, first object under the marker
        uid = f"{split}-{i:05d}"
        safe.save(images / f"{uid}.png")
        unsafe.save(images / f"{uid}-unsafe.png")
        rows.append({"id": uid, "safe_text": caption(scene),
                     "unsafe_text": unsafe_caption(scene, phrase, phrase_after_first=rng.random() < 0.5),
                     "safe_image": f"images/{uid}.png", "unsafe_image": f"images/{uid}-unsafe.png",
                     "category": category, "attributes": attributes(scene)})
        bar.update(1)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def world_is_complete(out: Path, settings: dict) -> bool:
    meta = out / "world.json"
    if not meta.is_file():
        return False
    return json.loads(meta.read_text()).get("settings") == settings


def build_world(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int = DEFAULT_SIZES["n_train"],
                n_val: int = DEFAULT_SIZES["n_val"], n_test: int = DEFAULT_SIZES["n_test"],
                n_found: int = DEFAULT_SIZES["n_found"], n_distractors: int = DEFAULT_SIZES["n_distractors"],
                progress: bool = True) -> Path:
    """Write the world to ``out_dir`` (reused when already built with the same settings); returns it."""
    out = Path(out_dir)
    settings = {"version": WORLD_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test,
                "n_found": n_found, "n_distractors": n_distractors}
    if world_is_complete(out, settings):
        return out
    if out.exists():  # an interrupted or different build: start clean
        shutil.rmtree(out)
    images = out / "images"
    images.mkdir(parents=True)
    rng = random.Random(seed)
    taken: set[str] = set()
    total = n_train + n_val + n_test + n_found + n_distractors
    with tqdm(total=total, desc="world", unit="item", disable=not progress) as bar:
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            scenes = _scenes_for(split, count, seed, rng, taken)
            _write_jsonl(out / f"{split}.jsonl", _quadruplet_rows(split, scenes, seed, images, bar))
        # Found unsafe images and distractors: test compositions not used by any quadruplet.
        pool_rng = random.Random(f"{seed}:pools")
        found, distractors = [], []
        for i, scene in enumerate(_scenes_for("test", n_found, seed, rng, taken)):
            category = CATEGORIES[i % len(CATEGORIES)]
            uid = f"found-{i:05d}"
            render(scene, random.Random(pool_rng.randrange(2**31)), marker=MARKERS[category]).save(images / f"{uid}.png")
            found.append({"id": uid, "unsafe_image": f"images/{uid}.png", "category": category})
            bar.update(1)
        for i, scene in enumerate(_scenes_for("test", n_distractors, seed, rng, taken)):
            uid = f"distractor-{i:05d}"
            render(scene, random.Random(pool_rng.randrange(2**31))).save(images / f"{uid}.png")
            distractors.append({"id": uid, "safe_image": f"images/{uid}.png", "safe_text": caption(scene),
                                "attributes": attributes(scene)})
            bar.update(1)
    _write_jsonl(out / "found_unsafe.jsonl", found)
    _write_jsonl(out / "distractors.jsonl", distractors)
    write_json_atomic(out / "world.json", {"settings": settings, "categories": list(CATEGORIES),
                                           "format": "safeclip quadruplet table (JSONL)"})
    return out
