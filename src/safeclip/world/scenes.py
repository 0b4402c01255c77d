"""Procedural scenes of the miniature world: sample, caption, render (safe and with an unsafe marker).

A scene is one or two coloured shapes of a size on a background, in a spatial relation:
"a small red circle left of a big blue square on a grey background". Rendering is pure PIL at
``IMAGE_SIZE`` pixels and deterministic given the scene and a ``random.Random``.

    scene = sample_scene(random.Random(0))
    caption(scene), render(scene, rng), render(scene, rng, marker=MARKERS["blood"])
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


def caption(scene: Scene, unsafe_phrase: str | None = None, *, phrase_after_first: bool = True) -> str:
    """The scene's caption; with ``unsafe_phrase`` inserted, its unsafe counterpart t*."""
    first = scene.first.phrase()
    if unsafe_phrase and phrase_after_first:
        first = f"{first} {unsafe_phrase}"
    parts = [first]
    if scene.second is not None:
        parts.append(f"{scene.relation} {scene.second.phrase()}")
    parts.append(f"on a {scene.background} background")
    text = " ".join(parts)
    if unsafe_phrase and not phrase_after_first:
        text = f"{text} {unsafe_phrase}"
    return text


def _centres(scene: Scene, rng: random.Random) -> list[tuple[int, int]]:
    jitter = lambda: rng.randint(-2, 2)  # noqa: E731
    mid = IMAGE_SIZE // 2
    if scene.second is None:
        return [(mid + jitter(), mid + jitter())]
    near, far = IMAGE_SIZE // 4 + 1, IMAGE_SIZE - IMAGE_SIZE // 4 - 1
    a, b = {"left of": ((near, mid), (far, mid)), "right of": ((far, mid), (near, mid)),
            "above": ((mid, near), (mid, far)), "below": ((mid, far), (mid, near))}[scene.relation]
    return [(a[0] + jitter(), a[1] + jitter()), (b[0] + jitter(), b[1] + jitter())]


def _draw_thing(pen: ImageDraw.ImageDraw, thing: Thing, centre: tuple[int, int]) -> None:
    r = SIZES[thing.size] // 2
    x, y = centre
    fill = COLOURS[thing.colour]
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


def draw_marker(image: Image.Image, marker: Marker, rng: random.Random) -> Image.Image:
    """Draw a category marker (pattern + colour) at a random corner and scale; returns a new image."""
    image = image.copy()
    pen = ImageDraw.Draw(image)
    s = rng.randint(9, 13)
    x0 = rng.choice((0, IMAGE_SIZE - s)) + rng.randint(0, 1)
    y0 = rng.choice((0, IMAGE_SIZE - s)) + rng.randint(0, 1)
    x1, y1 = x0 + s - 1, y0 + s - 1
    colour = marker.colour
    pen.rectangle((x0, y0, x1, y1), fill=(255, 255, 255))  # a light tile makes every glyph visible
    if marker.pattern == "cross":
        pen.line((x0, y0, x1, y1), fill=colour, width=2)
        pen.line((x0, y1, x1, y0), fill=colour, width=2)
    elif marker.pattern == "stripes":
        for k in range(0, s, 3):
            pen.line((x0, y0 + k, x1, y0 + k), fill=colour, width=1)
    elif marker.pattern == "dots":
        for i in range(x0 + 1, x1, 3):
            for j in range(y0 + 1, y1, 3):
                pen.rectangle((i, j, i + 1, j + 1), fill=colour)
    elif marker.pattern == "zigzag":
        points = [(x0 + k, y0 + (0 if k % 4 < 2 else s - 1)) for k in range(0, s, 2)]
        pen.line(points, fill=colour, width=2)
    else:  # ring
        pen.ellipse((x0 + 1, y0 + 1, x1 - 1, y1 - 1), outline=colour, width=2)
    return image


def render(scene: Scene, rng: random.Random, *, marker: Marker | None = None) -> Image.Image:
    """The scene as an RGB image; with ``marker``, the unsafe counterpart v* of the same layout."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    things = [scene.first] + ([scene.second] if scene.second else [])
    for thing, centre in zip(things, _centres(scene, rng)):
        _draw_thing(pen, thing, centre)
    return draw_marker(image, marker, rng) if marker else image
