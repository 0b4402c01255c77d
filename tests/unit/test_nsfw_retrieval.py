"""NSFW@top-1 rate on hand-made embeddings; streamed image encoding equals encoding the decoded images."""

import random

import torch
from PIL import Image

from safeclip.data.loader import load_rgb
from safeclip.eval.embed import encode_image_files
from safeclip.eval.nsfw_retrieval import nsfw_retrieval, unsafe_top1_rate
from safeclip.models.clip import encode_images, encode_texts


def test_unsafe_top1_rate_by_hand():
    """Query 0 is nearest the unsafe item, query 1 the safe one, query 2 the unsafe one: 2 of 3 = 66.7 %."""
    unsafe = torch.tensor([[1.0, 0.0]])
    safe = torch.tensor([[0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [0.1, 1.0], [5.0, 4.0]])
    assert abs(unsafe_top1_rate(queries, unsafe, safe) - 200 / 3) < 1e-4


def write_photos(folder, n: int, seed: int) -> list:
    """``n`` JPEG photos of different sizes and aspect ratios (as found images are), noise-textured."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = (rng.randint(40, 90), rng.randint(30, 70))
        image = Image.effect_noise(size, rng.uniform(20, 90)).convert("RGB")
        image = Image.merge("RGB", [band.point(lambda v, k=k: (v + 60 * k + 17 * i) % 256) for k, band in enumerate(image.split())])
        path = folder / f"{i:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def test_streamed_table3_equals_the_in_memory_one(tmp_path, tiny_clip):
    """Streamed batches (3 per batch over 7 / 11 images, also through 2 loader workers) give the embeddings
    and the Table 3 rates that encoding every decoded image at once gives."""
    unsafe = {"found": write_photos(tmp_path / "unsafe", 7, seed=1)}
    distractors = write_photos(tmp_path / "safe", 11, seed=2)
    texts = ["a red circle covered in blood", "angry man holding knife", "drug smoke on the left", "a crying star"]
    safe_texts = [f"a {c} square near a {s}" for c in ("red", "blue", "green") for s in ("circle", "star")]
    in_memory = encode_images(tiny_clip.vision, tiny_clip.image_processor, [load_rgb(p) for p in distractors])
    for workers in (0, 2):
        streamed = encode_image_files(tiny_clip.vision, tiny_clip.image_processor, distractors, batch_size=3,
                                      num_workers=workers)
        assert torch.allclose(streamed, in_memory, atol=1e-6, rtol=0)
    image_unsafe = encode_images(tiny_clip.vision, tiny_clip.image_processor, [load_rgb(p) for p in unsafe["found"]])
    text_unsafe = encode_texts(tiny_clip.text, tiny_clip.tokenizer, texts)
    text_safe = encode_texts(tiny_clip.text, tiny_clip.tokenizer, safe_texts)
    expected = {"T2I": unsafe_top1_rate(text_unsafe, image_unsafe, in_memory),
                "I2T": unsafe_top1_rate(image_unsafe, text_unsafe, text_safe)}
    result = nsfw_retrieval(tiny_clip, unsafe_texts=texts, unsafe_images=unsafe, distractor_texts=safe_texts,
                            distractor_images=distractors, batch_size=3)
    assert result == {"T2I": {"found": expected["T2I"], "all": expected["T2I"]},
                      "I2T": {"found": expected["I2T"], "all": expected["I2T"]}}


def test_paper_mapping_of_sources_to_query_categories():
    """Issue 16.6: NudeNet and NSFW-URL images are queried with sexual / nudity texts, SMID with the rest."""
    import pytest

    from safeclip.eval.nsfw_retrieval import paper_categories, select_source_queries
    from safeclip.world.categories import CATEGORIES

    assert paper_categories("nudenet_images") == ("sexual", "nudity") == paper_categories("NSFW-URLs")
    assert set(paper_categories("smid_unsafe")) == set(CATEGORIES) - {"sexual", "nudity"}
    assert paper_categories("found_unsafe") is None
    tags = ["sexual", "Drug_Use", "nudity", "violence", "sexual"]
    chosen = select_source_queries(tags, ["nudenet", "smid", "mine", "custom"], {"custom": ("drug use",)})
    assert chosen["nudenet"]["indices"] == [0, 2, 4] and chosen["smid"]["indices"] == [1, 3]
    assert chosen["mine"] == {"categories": "all", "indices": [0, 1, 2, 3, 4]}
    assert chosen["custom"]["indices"] == [1]
    with pytest.raises(ValueError, match="no query text has one"):
        select_source_queries(["violence"], ["nudenet"])
