"""Each export loads in its target library's own loader and runs there."""

import pytest
import torch
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel

from safeclip.cli import main
from safeclip.export import export_model
from safeclip.models.clip import encode_texts, load_clip
from safeclip.models.lora import add_lora, apply_adapters, lora_config, lora_parameters
from tests.generators import run_tiny_llava, tiny_stable_diffusion


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


def test_exports_load_in_transformers_diffusers_and_llava(tmp_path, safe_bundle, tiny_clip_dir):
    written = export_model(safe_bundle, tmp_path / "export")
    assert set(written) == {"adapters", "hf", "diffusers", "llava"}
    texts = ["a red circle with a knife"]
    expected = encode_texts(safe_bundle.text, safe_bundle.tokenizer, texts)

    hf = load_clip(written["hf"])
    torch.testing.assert_close(encode_texts(hf.text, hf.tokenizer, texts), expected, atol=1e-5, rtol=0)
    CLIPModel.from_pretrained(written["hf"])

    again = apply_adapters(load_clip(tiny_clip_dir), written["adapters"])
    torch.testing.assert_close(encode_texts(again.text, again.tokenizer, texts), expected, atol=1e-5, rtol=0)

    # diffusers: the exported text encoder drives a Stable Diffusion pipeline, and swapping it changes the image
    from transformers import CLIPTokenizer

    text_encoder = CLIPTextModel.from_pretrained(written["diffusers"] / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(written["diffusers"] / "tokenizer")
    base_encoder = CLIPTextModel.from_pretrained(tiny_clip_dir)
    images = {}
    for name, encoder in (("safe", text_encoder), ("base", base_encoder)):
        pipe = tiny_stable_diffusion(encoder, tokenizer)
        images[name] = pipe(texts[0], num_inference_steps=2, height=16, width=16, output_type="np",
                            generator=torch.Generator().manual_seed(0)).images
    assert images["safe"].shape == (1, 16, 16, 3)
    assert abs(images["safe"] - images["base"]).max() > 0

    # LLaVA: the exported tower is the vision tower of a (tiny) LLaVA that generates tokens
    assert run_tiny_llava(CLIPVisionModel.from_pretrained(written["llava"] / "vision_tower"), new_tokens=3) == 3

def test_export_cli_from_run_folder_and_merged_has_no_adapters(tmp_path, tiny_clip_dir, capsys):
    assert main(["export", "--model", str(tiny_clip_dir), "--out", str(tmp_path / "e"), "--targets", "hf,llava"]) == 0
    assert (tmp_path / "e" / "hf" / "config.json").is_file() and (tmp_path / "e" / "llava" / "vision_tower").is_dir()
    assert main(["export", "--model", str(tiny_clip_dir), "--out", str(tmp_path / "f"), "--targets", "adapters"]) != 0


def test_exports_keep_the_stored_temperature_not_the_config_init_value(tmp_path, openai_style_clip_dir):
    """Issue 16.1: OpenAI's configs say logit_scale_init_value 2.6592 (14.3) while the stored weight is ln 100."""
    import json

    from safetensors.torch import load_file

    assert json.loads((openai_style_clip_dir / "config.json").read_text())["logit_scale_init_value"] == 2.6592
    assert load_clip(openai_style_clip_dir).logit_scale == pytest.approx(100.0, rel=1e-5)
    out = tmp_path / "e"
    assert main(["export", "--model", str(openai_style_clip_dir), "--out", str(out), "--targets", "hf,openclip"]) == 0
    exported = CLIPModel.from_pretrained(out / "hf")
    assert float(exported.logit_scale.detach().exp()) == pytest.approx(100.0, rel=1e-5)
    state = load_file(next((out / "openclip").glob("*.safetensors")))
    assert float(state["logit_scale"].exp()) == pytest.approx(100.0, rel=1e-5)
