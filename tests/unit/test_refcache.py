"""The frozen-reference cache is exact, keyed by what the references depend on, and reused."""

import torch

from safeclip.config import load_config
from safeclip.data import QuadrupletCollator, QuadrupletDataset, read_quadruplets
from safeclip.models.clip import load_clip
from safeclip.refcache import load_or_compute_references
from safeclip.train import prepare_encoders, reference_embeddings, safe_clip_step_losses
from tests.fixtures import write_quadruplets


def test_cached_references_equal_recomputed_ones_and_are_reused(tmp_path, tiny_clip_dir):
    data = write_quadruplets(tmp_path / "d", 10)
    records, report = read_quadruplets(data)
    bundle = load_clip(tiny_clip_dir)
    cfg = load_config(None, [f"data.train={data}", "lora.r=4", "lora.dropout=0.0"])
    text, vision = prepare_encoders(bundle, cfg)
    refs = load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records,
                                      report.modalities, tmp_path / "cache", batch_size=4)
    files = list((tmp_path / "cache").glob("references-*.safetensors"))
    assert len(files) == 1 and set(refs) == {"safe_text_ref", "safe_image_ref"}
    dataset = QuadrupletDataset(records, bundle.image_processor, report.modalities)
    batch = QuadrupletCollator(bundle.tokenizer)([dataset[i] for i in (7, 2, 5)])
    fresh = reference_embeddings(text, vision, batch, torch.float32)
    for key in refs:
        torch.testing.assert_close(refs[key][batch["index"]], fresh[key], atol=1e-5, rtol=0)
    with_cache = safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32, refs)
    without = safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32)
    torch.testing.assert_close(with_cache["total"], without["total"], atol=1e-5, rtol=1e-5)

    stamp = files[0].stat().st_mtime_ns  # same model and data: read back, not recomputed
    again = load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records,
                                       report.modalities, tmp_path / "cache")
    assert files[0].stat().st_mtime_ns == stamp and torch.equal(again["safe_text_ref"], refs["safe_text_ref"])
    load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records[:5],
                               report.modalities, tmp_path / "cache")  # other data: another key
    assert len(list((tmp_path / "cache").glob("references-*.safetensors"))) == 2


def test_training_with_adapters_on_does_not_touch_cached_references(tmp_path, tiny_clip_dir):
    """The cache is computed with adapters off: LoRA weights that moved change nothing in it."""
    data = write_quadruplets(tmp_path / "d", 6)
    records, report = read_quadruplets(data)
    bundle = load_clip(tiny_clip_dir)
    cfg = load_config(None, [f"data.train={data}", "lora.r=4"])
    text, vision = prepare_encoders(bundle, cfg)
    refs = load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records,
                                      report.modalities, tmp_path / "a")
    for p in text.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.5)
    moved = load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records,
                                       report.modalities, tmp_path / "b")
    assert torch.equal(refs["safe_text_ref"], moved["safe_text_ref"])
