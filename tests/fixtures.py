"""Small quadruplet datasets written by the tests: coloured squares, unsafe ones with a marker."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 220, 40),
           "white": (240, 240, 240), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle", "star")
UNSAFE = {"violence": "with a weapon", "blood": "covered in blood", "drug use": "near a drug smoke"}


def draw(colour: str, shape: str, marker: bool) -> Image.Image:
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    pen = ImageDraw.Draw(image)
    box = (8, 8, 24, 24)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "triangle":
        pen.polygon([(16, 6), (26, 26), (6, 26)], fill=COLOURS[colour])
    else:
        pen.rectangle(box, fill=COLOURS[colour])
    if marker:
        pen.line((0, 0, 31, 31), fill=(200, 0, 0), width=3)
    return image


def write_quadruplets(folder: Path, n: int, *, seed: int = 0, name: str = "data.jsonl") -> Path:
    """``n`` quadruplet rows in the table format, images under ``folder/images``."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        category, phrase = rng.choice(list(UNSAFE.items()))
        safe_path, unsafe_path = f"images/{name}-{i}-safe.png", f"images/{name}-{i}-unsafe.png"
        draw(colour, shape, False).save(folder / safe_path)
        draw(colour, shape, True).save(folder / unsafe_path)
        rows.append({"id": f"{i}", "safe_text": f"a {colour} {shape}", "unsafe_text": f"a {colour} {shape} {phrase}",
                     "safe_image": safe_path, "unsafe_image": unsafe_path, "category": category})
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Payload:
    """Pickling this runs ``Path(marker).touch()`` when the pickle is loaded: a planted payload that a test checks
    never runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).touch, ())
