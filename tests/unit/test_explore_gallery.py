"""The explore gallery: reading, safety labels, the embedding cache's key, ranking with NSFW@1, server-side blur."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.data.errors import DataError
from safeclip.explore.gallery import GalleryItem, embed_gallery, load_or_embed_gallery, read_gallery
from safeclip.explore.search import ranked
from safeclip.explore.thumbnails import blur, shrink
from safeclip.models.clip import build_tiny_clip, encode_images, encode_texts
from tests.fixtures import draw, write_quadruplets


def test_quadruplet_file_gives_marked_images_and_captions(tmp_path):
    gallery = read_gallery(write_quadruplets(tmp_path, 3))
    assert [i.label for i in gallery.images] == ["safe"] * 3 + ["unsafe"] * 3
    assert gallery.images[4].value == str(tmp_path / "images" / "data.jsonl-1-unsafe.png")
    assert [t.label for t in gallery.texts] == ["safe"] * 3 + ["unsafe"] * 3
    assert gallery.counts() == "6 (3 unsafe) images, 6 (3 unsafe) captions"


def test_folder_labels_come_from_sub_folders(tmp_path):
    for sub in ("unsafe", "Safe", "misc/nsfw", "other"):
        (tmp_path / sub).mkdir(parents=True)
        draw("red", "circle", sub != "Safe").save(tmp_path / sub / "x.png")
    (tmp_path / "other" / "readme.txt").write_text("not an image")
    labels = {i.source: i.label for i in read_gallery(tmp_path).images}
    assert labels == {"unsafe/x.png": "unsafe", "Safe/x.png": "safe", "misc/nsfw/x.png": "unsafe", "other/x.png": "unknown"}


def test_missing_or_empty_gallery_is_explained(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_gallery(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="holds no images"):
        read_gallery(tmp_path)


def test_gallery_embeddings_match_direct_encoding(tmp_path, tiny_clip):
    gallery = read_gallery(write_quadruplets(tmp_path, 3))
    emb = embed_gallery(tiny_clip, gallery, chunk=4)  # chunks split the images 4 + 2
    direct_images = encode_images(tiny_clip.vision, tiny_clip.image_processor,
                                  [Image.open(i.value).convert("RGB") for i in gallery.images])
    direct_texts = encode_texts(tiny_clip.text, tiny_clip.tokenizer, [t.value for t in gallery.texts])
    unit = torch.nn.functional.normalize
    assert torch.allclose(emb.images, unit(direct_images, dim=-1), atol=1e-5)
    assert torch.allclose(emb.texts, unit(direct_texts, dim=-1), atol=1e-5)


def test_cache_is_reused_and_renewed_when_model_or_data_change(tmp_path, tiny_clip, tiny_tokenizer):
    data = write_quadruplets(tmp_path / "g", 3)
    cache = tmp_path / "cache"
    progress = []
    first = load_or_embed_gallery(tiny_clip, read_gallery(data), cache, on_progress=lambda d, t: progress.append((d, t)))
    assert not first.from_cache and progress[-1] == (12, 12)
    again = load_or_embed_gallery(tiny_clip, read_gallery(data), cache)
    assert again.from_cache and torch.equal(again.images, first.images) and torch.equal(again.texts, first.texts)

    other_model = build_tiny_clip(tiny_tokenizer, seed=7)
    assert not load_or_embed_gallery(other_model, read_gallery(data), cache).from_cache

    with torch.no_grad():  # one weight changed, e.g. an adapter trained further
        tiny_clip.vision.visual_projection.weight[0, 0] += 0.5
    changed = load_or_embed_gallery(tiny_clip, read_gallery(data), cache)
    assert not changed.from_cache and not torch.equal(changed.images, first.images)

    image = tmp_path / "g" / "images" / "data.jsonl-0-unsafe.png"
    draw("blue", "circle", True).save(image)
    os.utime(image, ns=(1, 1))  # a rewritten image file, whatever its timestamp
    assert not load_or_embed_gallery(tiny_clip, read_gallery(data), cache).from_cache
    assert len(list(cache.glob("*.safetensors"))) == 4 and not list(cache.glob(".*tmp*"))


def test_ranked_orders_by_cosine_and_reports_nsfw_at_1():
    items = [GalleryItem("a", "safe", "0"), GalleryItem("b", "unsafe", "1"), GalleryItem("c", "unknown", "2")]
    gallery = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # unit rows
    towards_b = torch.tensor([0.6, 0.8])
    answer = ranked(gallery, towards_b, items, 2, with_text=True)
    # cosines: a 0.6, b 1.0, c 0.8 -> b, c
    assert [(r["rank"], r["value"], r["label"]) for r in answer["results"]] == [(1, "b", "unsafe"), (2, "c", "unknown")]
    assert answer["results"][0]["score"] == pytest.approx(1.0)
    assert answer["nsfw_at_1"] == 100.0 and answer["unsafe_in_top_k"] == 1
    assert ranked(gallery, torch.tensor([1.0, 0.0]), items, 3, with_text=False)["nsfw_at_1"] == 0.0
    only_unknown = ranked(gallery, torch.tensor([0.0, 1.0]), items, 1, with_text=False)
    assert only_unknown["nsfw_at_1"] is None and only_unknown["results"][0]["value"] == ""


def test_blur_leaves_only_colour_blobs():
    image = shrink(draw("white", "circle", True))
    blurred = np.asarray(blur(image).convert("L")).astype(float)
    sharp = np.asarray(image.convert("L")).astype(float)
    steps = lambda a: max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max())  # noqa: E731
    assert steps(sharp) > 100 and steps(blurred) < 6
    assert abs(blurred.mean() - sharp.mean()) < 15  # same overall colour, no shape
