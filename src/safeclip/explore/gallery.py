"""The explore gallery: images and captions, each marked safe, unsafe or unknown, and their cached embeddings.

A gallery is read from a quadruplet file (safe and unsafe images and captions, each marked by its column)
or from a folder of images (marked unsafe under a sub-folder named ``unsafe``/``nsfw``, safe under
``safe``, unknown elsewhere). Its embeddings are computed once per model with the project's
:func:`~safeclip.eval.embed.embed_quadruplets` and kept on disk under a key made of the model's weights
and preprocessing and of the gallery's texts and image files, so a changed model or a changed gallery
is embedded again and an unchanged one is loaded in a moment.

    gallery = read_gallery("demo/world/test.jsonl")
    emb = load_or_embed_gallery(bundle, gallery, cache_dir, on_progress=lambda done, total: ...)
    emb.images  # (N_images, D) unit rows, in gallery.images order
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safeclip.data.errors import DataError
from safeclip.data.quadruplets import Quadruplet, read_quadruplets
from safeclip.eval.embed import embed_quadruplets
from safeclip.fingerprint import update_with_file, update_with_processors, update_with_tensors

CACHE_VERSION = "explore-gallery-1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
UNSAFE_FOLDERS = {"unsafe", "nsfw"}
SAFE_FOLDERS = {"safe", "sfw"}
LABELS = ("safe", "unsafe", "unknown")


@dataclass(frozen=True)
class GalleryItem:
    """One image (``value`` is its path) or caption (``value`` is the text) with its safety label."""

    value: str
    label: str  # one of LABELS
    source: str  # the row id or the file name it came from


@dataclass
class Gallery:
    """What queries are matched against: images (for text queries) and captions (for image queries)."""

    source: str
    images: list[GalleryItem]
    texts: list[GalleryItem]

    def counts(self) -> str:
        def count(items):
            unsafe = sum(item.label == "unsafe" for item in items)
            return f"{len(items)} ({unsafe} unsafe)" if unsafe else str(len(items))

        return f"{count(self.images)} images, {count(self.texts)} captions"


def read_gallery(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> Gallery:
    """A gallery from a quadruplet file (any format ``read_quadruplets`` reads) or a folder of images."""
    path = Path(path)
    if path.is_dir():
        return _folder_gallery(path)
    if not path.exists():
        raise DataError(f"gallery {path} does not exist; give a quadruplet file (JSONL/CSV/ViSU JSON) or a folder of images")
    records, _ = read_quadruplets(path, image_root=image_root)
    return _records_gallery(str(path), records)


def _records_gallery(source: str, records: Sequence[Quadruplet]) -> Gallery:
    images, texts = [], []
    for side, label in (("safe", "safe"), ("unsafe", "unsafe")):
        for record in records:
            image, text = getattr(record, f"{side}_image"), getattr(record, f"{side}_text")
            if image is not None:
                images.append(GalleryItem(str(image), label, record.id))
            if text is not None:
                texts.append(GalleryItem(text, label, record.id))
    return Gallery(source, images, texts)


def _folder_label(relative: Path) -> str:
    folders = {part.lower() for part in relative.parts[:-1]}
    if folders & UNSAFE_FOLDERS:
        return "unsafe"
    return "safe" if folders & SAFE_FOLDERS else "unknown"


def _folder_gallery(folder: Path) -> Gallery:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = [GalleryItem(str(p), _folder_label(p.relative_to(folder)), p.relative_to(folder).as_posix()) for p in files]
    if not images:
        raise DataError(f"gallery folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "put images in it (under unsafe/ and safe/ to mark them) or give a quadruplet file")
    return Gallery(str(folder), images, [])


@dataclass
class GalleryEmbeddings:
    """Unit-norm embeddings of a gallery under one model: ``images (N_images, D)``, ``texts (N_texts, D)``."""

    images: torch.Tensor
    texts: torch.Tensor
    from_cache: bool = False


def gallery_fingerprint(bundle, gallery: Gallery) -> str:
    """sha256 of everything the gallery's embeddings depend on: every weight (adapters included), the
    tokenizer and image preprocessing, the captions and each image file's path, size and mtime."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for model in (bundle.text, bundle.vision):
        update_with_tensors(h, dict(model.named_parameters()))
    update_with_processors(h, bundle.tokenizer, bundle.image_processor)
    for item in gallery.images:
        update_with_file(h, Path(item.value))
    h.update(b"\0texts\0")
    for item in gallery.texts:
        h.update(item.value.encode() + b"\0")
    return h.hexdigest()


Progress = Callable[[int, int], None]  # (items embedded so far, items in all)


def _embed_items(bundle, items: Sequence[GalleryItem], modality: str, *, chunk: int, batch_size: int,
                 done: int, total: int, on_progress: Progress | None) -> torch.Tensor:
    """Embeddings ``(len(items), D)`` of images or captions, ``chunk`` at a time so progress can be reported.

    Each item goes into the ``safe_*`` slot of a one-modality record; the slot only says which encoder reads it.
    """
    out = []
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        records = [Quadruplet(id=item.source, safe_text=item.value if modality == "safe_text" else None, unsafe_text=None,
                              safe_image=Path(item.value) if modality == "safe_image" else None, unsafe_image=None,
                              row=start + i + 1) for i, item in enumerate(part)]
        emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records,
                                modalities=(modality,), batch_size=batch_size)
        out.append(emb[modality])
        if on_progress is not None:
            on_progress(done + start + len(part), total)
    return torch.cat(out) if out else torch.empty(0, bundle.embed_dim)


def embed_gallery(bundle, gallery: Gallery, *, batch_size: int = 256, chunk: int = 512,
                  on_progress: Progress | None = None) -> GalleryEmbeddings:
    """Embed every image and caption of ``gallery`` (unit rows), reporting progress after each chunk."""
    total = len(gallery.images) + len(gallery.texts)
    images = _embed_items(bundle, gallery.images, "safe_image", chunk=chunk, batch_size=batch_size, done=0,
                          total=total, on_progress=on_progress)
    texts = _embed_items(bundle, gallery.texts, "safe_text", chunk=chunk, batch_size=batch_size,
                         done=len(gallery.images), total=total, on_progress=on_progress)
    unit = torch.nn.functional.normalize
    return GalleryEmbeddings(unit(images, dim=-1), unit(texts, dim=-1))


def load_or_embed_gallery(bundle, gallery: Gallery, cache_dir: str | os.PathLike, *, batch_size: int = 256,
                          on_progress: Progress | None = None) -> GalleryEmbeddings:
    """The gallery's embeddings from ``cache_dir`` when model and gallery are unchanged, else computed and cached."""
    path = Path(cache_dir) / f"gallery-{gallery_fingerprint(bundle, gallery)[:32]}.safetensors"
    if path.is_file():
        tensors = load_file(path)
        return GalleryEmbeddings(tensors["images"], tensors["texts"], from_cache=True)
    emb = embed_gallery(bundle, gallery, batch_size=batch_size, on_progress=on_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({"images": emb.images.contiguous(), "texts": emb.texts.contiguous()}, tmp)
    os.replace(tmp, path)
    return emb
