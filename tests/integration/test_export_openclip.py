"""OpenCLIP export: open_clip's key/shape layout, the same embeddings through an open_clip-layout forward pass,
a lossless reverse conversion to Hugging Face, and the model card (open_clip itself needs torchvision, absent here)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel

from safeclip.cli import main
from safeclip.export import export_model
from safeclip.export.openclip import encode_image, encode_text, hf_to_openclip, openclip_layout, openclip_to_hf
from safeclip.models.clip import encode_images, encode_texts, load_clip
from safeclip.models.lora import add_lora, lora_config, lora_parameters, to_clip_model

TEXTS = ["a red circle with a knife", "a small blue square above a green star"]


@pytest.fixture()
def safe_bundle(tiny_clip_dir):
    bundle = load_clip(tiny_clip_dir)
    cfg = lora_config(4, 4, 0.0, ["k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    bundle.text, bundle.vision = add_lora(bundle.text, cfg), add_lora(bundle.vision, cfg)
    torch.manual_seed(0)
    for model in (bundle.text, bundle.vision):
        for p in lora_parameters(model).values():
            torch.nn.init.normal_(p, std=0.3)
    return bundle


def test_openclip_export_layout_embeddings_and_reverse(tmp_path, safe_bundle):
    written = export_model(safe_bundle, tmp_path / "export", ["openclip"])
    folder = written["openclip"]
    state = load_file(str(folder / "open_clip_model.safetensors"))
    config = json.loads((folder / "open_clip_config.json").read_text())
    cfg = config["model_cfg"]
    assert cfg["quick_gelu"] is True and config["preprocess_cfg"]["mean"] == list(safe_bundle.image_processor.image_mean)
    assert json.loads((folder / "safeclip.json").read_text()) == cfg

    # exactly open_clip's persistent keys and shapes for this config (derived from the config, not the converter)
    assert {k: tuple(v.shape) for k, v in state.items()} == openclip_layout(cfg)
    assert cfg["vision_cfg"] == {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16, "mlp_ratio": 2.0}

    # an open_clip-layout forward pass gives the (LoRA-merged) Safe-CLIP embeddings
    tokens = safe_bundle.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ours = encode_text(state, cfg, tokens["input_ids"], eot_token_id=safe_bundle.tokenizer.eos_token_id)
    torch.testing.assert_close(ours, encode_texts(safe_bundle.text, safe_bundle.tokenizer, TEXTS), atol=1e-5, rtol=0)
    from PIL import Image

    torch.manual_seed(1)
    images = [Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()) for _ in range(2)]
    pixels = safe_bundle.image_processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(encode_image(state, cfg, pixels),
                               encode_images(safe_bundle.vision, safe_bundle.image_processor, images), atol=1e-5, rtol=0)
    assert torch.exp(state["logit_scale"]).item() == pytest.approx(safe_bundle.logit_scale, rel=1e-5)

    # reverse conversion: a Hugging Face CLIPModel that loads strictly and matches the merged model bit for bit
    reference = to_clip_model(safe_bundle)
    back = openclip_to_hf(state)
    model = CLIPModel(reference.config)
    model.load_state_dict(back, strict=True)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    assert openclip_to_hf(hf_to_openclip(reference.state_dict())).keys() == reference.state_dict().keys()


def test_gelu_text_config_is_marked_and_bad_state_refused(safe_bundle):
    from safeclip.export.openclip import openclip_model_config

    text, vision = safe_bundle.text.config, safe_bundle.vision.config
    vision_gelu = type(vision)(**{**vision.to_dict(), "hidden_act": "gelu"})
    assert openclip_model_config(text, vision_gelu, 32)["quick_gelu"] is False
    with pytest.raises(ValueError, match="activation"):
        openclip_model_config(text, type(vision)(**{**vision.to_dict(), "hidden_act": "relu"}), 32)
    with pytest.raises(ValueError, match="CLIPModel state dict"):
        hf_to_openclip({"text_model.embeddings.token_embedding.weight": torch.zeros(1)})


def test_export_cli_writes_model_cards_with_measured_numbers(tmp_path, tiny_clip_dir):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"protocol": "safe-clip-i2t", "results": {
        "clip": {"n": 10, "nsfw_pct": 40.0, "toxicity": 0.25, "judges_pct": {}},
        "safe-clip": {"n": 10, "nsfw_pct": 10.0, "toxicity": 0.05, "judges_pct": {}}}}))
    out = tmp_path / "e"
    assert main(["export", "--model", str(tiny_clip_dir), "--out", str(out), "--targets", "hf,openclip,card",
                 "--results", str(results), "--data", "offline world, 600 quadruplets"]) == 0
    for folder in (out, out / "hf", out / "openclip"):
        card = (folder / "README.md").read_text()
        assert "offline world, 600 quadruplets" in card and "10.0% NSFW captions" in card
        assert "ViT-L-14-quickgelu" in card and f"{out.as_posix()}/openclip/open_clip_model.safetensors" in card
        assert "## Limits" in card and str(tiny_clip_dir) in card
    CLIPModel.from_pretrained(out / "hf")  # the card beside the weights does not disturb loading
    no_numbers = tmp_path / "n"
    assert main(["export", "--model", str(tiny_clip_dir), "--out", str(no_numbers), "--targets", "card"]) == 0
    assert "claims no numbers" in (no_numbers / "README.md").read_text()
    assert main(["export", "--model", str(tiny_clip_dir), "--out", str(tmp_path / "m"), "--targets", "card",
                 "--results", str(tmp_path / "missing.json")]) == 2


def import_open_clip():
    """open_clip itself, or a skip that says why (it imports torchvision, which has no build for CI's CPU torch 2.13.0;
    it installs beside torch 2.14.1 + torchvision 0.29.1 from the same package index)."""
    try:
        import open_clip
    except ImportError as err:
        pytest.skip(f"open_clip with a compatible torchvision is not installed ({err}); CI's CPU torch 2.13.0 has no "
                    "torchvision build, so this check runs where torch 2.14.1 + torchvision 0.29.1 + open_clip_torch are")
    return open_clip


def test_openclip_export_loads_in_open_clip_and_matches_hf(tmp_path, safe_bundle):
    """Issue 16.9: open_clip's own loader and forward pass, not one written for the test."""
    open_clip = import_open_clip()
    folder = export_model(safe_bundle, tmp_path / "export", ["openclip"])["openclip"]
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    tokens = safe_bundle.tokenizer(TEXTS, padding="max_length", return_tensors="pt")["input_ids"]  # (B, context)
    with torch.no_grad():
        text = model.encode_text(tokens)
    torch.testing.assert_close(text, encode_texts(safe_bundle.text, safe_bundle.tokenizer, TEXTS), atol=1e-4, rtol=0)
    from PIL import Image

    torch.manual_seed(2)
    images = [Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()) for _ in range(2)]
    pixels = safe_bundle.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image = model.encode_image(pixels)
    torch.testing.assert_close(image, encode_images(safe_bundle.vision, safe_bundle.image_processor, images),
                               atol=1e-4, rtol=0)
    assert float(model.logit_scale.exp()) == pytest.approx(safe_bundle.logit_scale, rel=1e-5)
