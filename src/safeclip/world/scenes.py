"""Procedural scenes of the miniature world: sample, caption, render (safe and with an unsafe marker).

A scene is one or two coloured shapes of a size on a background, in a spatial relation:
"a small red circle left of a big blue square on a grey background". Rendering is pure PIL at
``IMAGE_SIZE`` pixels and deterministic given the scene and a ``random.Random``.

The unsafe counterparts stand in for ViSU's generated ones, which keep the gist of the safe item but
not every detail: t* (``unsafe_caption``) inserts a category phrase and drops the background clause;
v* (``render(..., marker=...)``) covers the first object with the category's pattern, so its colour is
gone while the rest of the scene stays. Each side loses something the other keeps.

    scene = sample_scene(random.Random(0))
    caption(scene), unsafe_caption(scene, "covered in blood", phrase_after_first=True)
    render(scene, rng), render(scene, rng, marker=MARKERS["blood"])
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from safeclip.world.categories import Marker

IMAGE_SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 215, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "cyan": (40, 210, 220), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "bar")
SIZES = {"small": 7, "big": 12}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "dark": (40, 40, 50), "sand": (200, 180, 140), "teal": (60, 120, 120),
}
RELATIONS = ("left of", "right of", "above", "below")
MARKER_GROUND = (235, 235, 235)


@dataclass(frozen=True)
class Thing:
    size: str
    colour: str
    shape: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    first: Thing
    background: str
    relation: str | None = None
    second: Thing | None = None

    @property
    def composition(self) -> tuple:
        """What must not repeat across splits: the colour-shape pair(s) of the scene."""
        second = (self.second.colour, self.second.shape) if self.second else None
        return (self.first.colour, self.first.shape, second)


def sample_thing(rng: random.Random) -> Thing:
    return Thing(rng.choice(list(SIZES)), rng.choice(list(COLOURS)), rng.choice(SHAPES))


def sample_scene(rng: random.Random) -> Scene:
    background = rng.choice(list(BACKGROUNDS))
    first = sample_thing(rng)
    if rng.random() < 0.25:
        return Scene(first, background)
    second = sample_thing(rng)
    while (second.colour, second.shape) == (first.colour, first.shape):
        second = sample_thing(rng)
    return Scene(first, background, rng.choice(RELATIONS), second)


def caption(scene: Scene, unsafe_phrase: str | None = None, *, phrase_after_first: bool = True,
            background: bool = True) -> str:
    """The scene's caption; with ``unsafe_phrase`` inserted, its unsafe counterpart t* (see ``unsafe_caption``)."""
    first = scene.first.phrase()
    if unsafe_phrase and phrase_after_first:
        first = f"{first} {unsafe_phrase}"
    parts = [first]
    if scene.second is not None:
        parts.append(f"{scene.relation} {scene.second.phrase()}")
    if background:
        parts.append(f"on a {scene.background} background")
    text = " ".join(parts)
    if unsafe_phrase and not phrase_after_first:
        text = f"{text} {unsafe_phrase}"
    return text


def unsafe_caption(scene: Scene, unsafe_phrase: str, *, phrase_after_first: bool) -> str:
    """t*: the caption rewritten around an unsafe phrase; objects, sizes and relation stay, the background goes.

    Like ViSU's LLM rewrites, t* keeps the gist of t but not every detail of it.
    """
    return caption(scene, unsafe_phrase, phrase_after_first=phrase_after_first, background=False)


def _centres(scene: Scene, rng: random.Random) -> list[tuple[int, int]]:
    jitter = lambda: rng.randint(-2, 2)  # noqa: E731
    mid = IMAGE_SIZE // 2
    if scene.second is None:
        return [(mid + jitter(), mid + jitter())]
    near, far = IMAGE_SIZE // 4 + 1, IMAGE_SIZE - IMAGE_SIZE // 4 - 1
    a, b = {"left of": ((near, mid), (far, mid)), "right of": ((far, mid), (near, mid)),
            "above": ((mid, near), (mid, far)), "below": ((mid, far), (mid, near))}[scene.relation]
    return [(a[0] + jitter(), a[1] + jitter()), (b[0] + jitter(), b[1] + jitter())]


def _draw_thing(pen: ImageDraw.ImageDraw, thing: Thing, centre: tuple[int, int], fill=None) -> None:
    r = SIZES[thing.size] // 2
    x, y = centre
    fill = COLOURS[thing.colour] if fill is None else fill
    if thing.shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif thing.shape == "square":
        pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif thing.shape == "triangle":
        pen.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    elif thing.shape == "diamond":
        pen.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif thing.shape == "cross":
        w = max(1, r // 2)
        pen.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        pen.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    else:  # bar
        pen.rectangle((x - r, y - max(1, r // 3), x + r, y + max(1, r // 3)), fill=fill)


def draw_pattern(pen: ImageDraw.ImageDraw, marker: Marker, rng: random.Random) -> None:
    """The category's pattern in its colour on a light ground, over the whole canvas, at a random
    period (scale) and phase (position)."""
    size, colour = IMAGE_SIZE, marker.colour
    step = rng.randint(3, 4)
    off = rng.randrange(step)
    pen.rectangle((0, 0, size - 1, size - 1), fill=MARKER_GROUND)
    if marker.pattern == "cross":
        for k in range(-size + off, size, 2 * step):
            pen.line((k, 0, k + size, size), fill=colour, width=1)
            pen.line((k + size, 0, k, size), fill=colour, width=1)
    elif marker.pattern == "stripes":
        for k in range(off, size, step):
            pen.line((0, k, size, k), fill=colour, width=1)
    elif marker.pattern == "dots":
        for i in range(off, size, step):
            for j in range(off, size, step):
                pen.rectangle((i, j, i + 1, j + 1), fill=colour)
    elif marker.pattern == "zigzag":
        for y in range(off, size, step):
            pen.line([(x, y + (0 if x % 4 < 2 else 2)) for x in range(0, size + 2, 2)], fill=colour, width=1)
    else:  # rings
        cx, cy = rng.randint(0, size), rng.randint(0, size)
        for r in range(1 + off, 2 * size, step):
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=1)


def draw_corner_marker(image: Image.Image, marker: Marker, rng: random.Random) -> Image.Image:
    """A tile of the category's pattern at a random corner and scale, over the scene (the style of world
    version 1's v*; ``experiments/uwm_probe.py --markers corner``)."""
    image = image.copy()
    s = rng.randint(9, 13)
    x0 = rng.choice((0, IMAGE_SIZE - s)) + rng.randint(0, 1)
    y0 = rng.choice((0, IMAGE_SIZE - s)) + rng.randint(0, 1)
    tile = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    draw_pattern(ImageDraw.Draw(tile), marker, rng)
    image.paste(tile.crop((0, 0, s, s)), (x0, y0))
    return image


def render(scene: Scene, rng: random.Random, *, marker: Marker | None = None) -> Image.Image:
    """The scene as an RGB image; with ``marker``, its unsafe counterpart v*.

    v* keeps the layout, the background, the second object and the first object's shape and size; the
    unsafe content covers the first object (its colour gives way to the category's pattern), as in ViSU,
    where the unsafe image is a new picture of t* in which the unsafe content takes over part of the scene.
    """
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    centres = _centres(scene, rng)
    if scene.second is not None:
        _draw_thing(pen, scene.second, centres[1])
    if marker is None:
        _draw_thing(pen, scene.first, centres[0])
        return image
    mask = Image.new("L", image.size, 0)
    _draw_thing(ImageDraw.Draw(mask), scene.first, centres[0], fill=255)
    pattern = Image.new("RGB", image.size)
    draw_pattern(ImageDraw.Draw(pattern), marker, rng)
    image.paste(pattern, (0, 0), mask)
    return image
