"""Model loading errors, LoRA merge/toggle (reversible safety) and the merged Hugging Face folder."""

import json

import pytest
import torch
from transformers import CLIPModel

from safeclip.models.clip import ClipLoadError, encode_texts, load_clip
from safeclip.models.lora import (
    adapters_disabled,
    add_lora,
    apply_adapters,
    lora_config,
    lora_parameters,
    merge_adapters,
    remove_adapters,
    save_adapters,
    save_merged_clip,
)
from safeclip.models.resolve import resolve_model

TARGETS = ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ClipLoadError, match="unknown model 'clip-large'.*openai/clip-vit-large-patch14"):
        load_clip("clip-large")


def test_folder_that_is_not_clip_is_a_clear_error(tmp_path):
    with pytest.raises(ClipLoadError, match="no config.json"):
        load_clip(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ClipLoadError, match="'bert' model, not CLIP"):
        load_clip(tmp_path)


def test_hub_id_offline_fails_clearly_without_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipLoadError, match="could not load CLIP hub id 'nobody/no-such-clip'"):
        load_clip("nobody/no-such-clip")


def with_random_lora(bundle):
    cfg = lora_config(4, 4, 0.0, TARGETS)
    bundle.text, bundle.vision = add_lora(bundle.text, cfg), add_lora(bundle.vision, cfg)
    torch.manual_seed(3)
    for model in (bundle.text, bundle.vision):
        for name, p in lora_parameters(model).items():
            torch.nn.init.normal_(p, std=0.3)
    return bundle


def test_merged_folder_loads_in_clipmodel_and_matches_adapter_model(tmp_path, tiny_clip):
    bundle = with_random_lora(tiny_clip)
    save_merged_clip(bundle, tmp_path / "merged")
    model = CLIPModel.from_pretrained(tmp_path / "merged")
    loaded = load_clip(tmp_path / "merged")
    assert loaded.tokenizer.model_max_length == bundle.tokenizer.model_max_length
    texts = ["a red circle", "a blue square with a knife"]
    tokens = bundle.tokenizer(texts, padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapter_text = bundle.text(**tokens).text_embeds
        adapter_image = bundle.vision(pixel_values=pixels).image_embeds
        merged_text = model.get_text_features(**tokens)
        merged_image = model.get_image_features(pixel_values=pixels)
    merged_text = getattr(merged_text, "pooler_output", merged_text)
    merged_image = getattr(merged_image, "pooler_output", merged_image)
    torch.testing.assert_close(merged_text, adapter_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged_image, adapter_image, atol=1e-5, rtol=0)
    with adapters_disabled(bundle.text):
        base_text = bundle.text(**tokens).text_embeds
    assert (base_text - adapter_text).abs().max() > 1e-3  # the adapters do change the model


def test_adapters_toggle_safety_on_and_off_exactly(tmp_path, tiny_clip_dir):
    base = load_clip(tiny_clip_dir)
    trained = with_random_lora(load_clip(tiny_clip_dir))
    save_adapters(trained, tmp_path / "adapters")
    texts = ["a green star near a drug smoke"]
    before = encode_texts(base.text, base.tokenizer, texts)
    safe = apply_adapters(base, tmp_path / "adapters")
    on = encode_texts(safe.text, safe.tokenizer, texts)
    torch.testing.assert_close(on, encode_texts(trained.text, trained.tokenizer, texts), atol=1e-6, rtol=0)
    off = remove_adapters(safe)
    for removed, original in ((off.text, base.text), (off.vision, base.vision)):
        removed_state, original_state = removed.state_dict(), original.state_dict()
        assert removed_state.keys() == original_state.keys()  # no LoRA layers left
        assert all(torch.equal(removed_state[k], original_state[k]) for k in original_state)  # bit-identical
    torch.testing.assert_close(encode_texts(off.text, off.tokenizer, texts), before, atol=1e-6, rtol=0)
    assert torch.equal(encode_texts(base.text, base.tokenizer, texts), before)  # applying copied, base untouched
    merged = merge_adapters(safe)
    torch.testing.assert_close(encode_texts(merged.text, merged.tokenizer, texts), on, atol=1e-5, rtol=0)


def test_resolve_model_requires_base_for_adapter_folder(tmp_path, tiny_clip_dir):
    trained = with_random_lora(load_clip(tiny_clip_dir))
    save_adapters(trained, tmp_path / "adapters")
    with pytest.raises(ClipLoadError, match="adapters only"):
        resolve_model(tmp_path / "adapters")
    bundle = resolve_model(tiny_clip_dir, adapters=tmp_path / "adapters")
    assert encode_texts(bundle.text, bundle.tokenizer, ["a cat"]).shape == (1, 32)


def test_weights_only_checkpoint_like_the_authors_release(tmp_path, tiny_clip_dir):
    """aimagelab/safeclip_vit-l_14 is a CLIPModel folder; a copy without tokenizer files needs its base's."""
    CLIPModel.from_pretrained(tiny_clip_dir).save_pretrained(tmp_path / "released")
    with pytest.raises(ClipLoadError, match="processor_from"):
        load_clip(tmp_path / "released")
    bundle = load_clip(tmp_path / "released", processor_from=tiny_clip_dir)
    reference = load_clip(tiny_clip_dir)
    texts = ["a red circle"]
    assert torch.equal(encode_texts(bundle.text, bundle.tokenizer, texts), encode_texts(reference.text, reference.tokenizer, texts))


def test_tokenizer_training_is_deterministic_and_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    from safeclip.models.tokenizer import train_clip_tokenizer

    texts = ["a small red circle left of a big blue square", "a green star covered in blood"] * 20
    a = train_clip_tokenizer(texts, vocab_size=300)
    b = train_clip_tokenizer(texts, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    ids = a("a small red circle covered in blood")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 1 and a.decode(ids, skip_special_tokens=True) == "a small red circle covered in blood"
    a.save_pretrained(tmp_path)
    assert CLIPTokenizer.from_pretrained(tmp_path)("a green star")["input_ids"] == a("a green star")["input_ids"]
