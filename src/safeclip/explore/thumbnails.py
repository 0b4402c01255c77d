"""Thumbnails for the explore page, blurred on the server so the page is safe to open even without CSS or script.

An unsafe (or unknown) image is only ever sent clear when the page asks for it explicitly (the reveal switch);
by default the server sends a version shrunk to a few pixels, blown up again and blurred, in which nothing
can be recognised.

    png = thumbnail_png(Image.open(path), blurred=True)   # bytes of a PNG
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image, ImageFilter

THUMB_SIZE = 160
BLUR_CELLS = 4  # the blurred thumbnail keeps at most this many cells across: colours only, no shapes
BLUR_RADIUS = 12


def shrink(image: Image.Image, size: int = THUMB_SIZE) -> Image.Image:
    """An RGB copy of ``image`` whose longer side is ``size`` pixels (small images are enlarged, pixels kept sharp)."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def blur(image: Image.Image) -> Image.Image:
    """``image`` reduced to a few cells of average colour, enlarged back and Gaussian-blurred."""
    cells = (max(1, round(BLUR_CELLS * image.width / max(image.size))), max(1, round(BLUR_CELLS * image.height / max(image.size))))
    coarse = image.resize(cells, Image.Resampling.BOX).resize(image.size, Image.Resampling.BILINEAR)
    return coarse.filter(ImageFilter.GaussianBlur(BLUR_RADIUS))


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def thumbnail_png(image: Image.Image, *, blurred: bool) -> bytes:
    """A PNG thumbnail of ``image``, blurred beyond recognition when ``blurred``."""
    small = shrink(image)
    return png_bytes(blur(small) if blurred else small)


@lru_cache(maxsize=4096)
def file_thumbnail_png(path: str, blurred: bool, mtime_ns: int) -> bytes:
    """:func:`thumbnail_png` of an image file, kept in memory (``mtime_ns`` renews it when the file changes)."""
    with Image.open(path) as image:
        return thumbnail_png(image, blurred=blurred)
