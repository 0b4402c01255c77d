"""Each export loads in its target library's own loader and runs there."""

import pytest
import torch
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel

from safeclip.cli import main
from safeclip.export import export_model
from safeclip.models.clip import encode_texts, load_clip
from safeclip.models.lora import add_lora, apply_adapters, lora_config, lora_parameters
from tests.generators import run_tiny_llava, tiny_sdxl, tiny_stable_diffusion


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


# ----------------------------------------------------------------------------- issue 16.2: SD 2 and SDXL


def openclip_like_clip_dir(folder, tokenizer, *, hidden_size=32, projection_dim=32, num_layers=3, seed=1):
    """A tiny CLIP folder shaped like OpenCLIP's text towers in HF format (GELU, not QuickGELU)."""
    from safeclip.models.clip import tiny_clip_config, tiny_image_processor

    config = tiny_clip_config(tokenizer, image_size=32, patch_size=8, hidden_size=hidden_size,
                              projection_dim=projection_dim, num_layers=num_layers, num_heads=2, intermediate_size=64)
    config.text_config.hidden_act = config.vision_config.hidden_act = "gelu"
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    tiny_image_processor(32).save_pretrained(folder)
    return folder


def bang_padded(tokenizer):
    """SD 2's and SDXL's second tokenizer pad with '!' (OpenCLIP pads with token 0)."""
    import copy

    other = copy.deepcopy(tokenizer)
    other.pad_token = "!"
    return other


def test_sd2_export_conditions_on_the_penultimate_layer(tmp_path, tiny_tokenizer, capsys):
    """SD 2's text_encoder is the ViT-H text tower cut to 23 of 24 layers with the final layer norm applied."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTokenizer

    clip_dir = openclip_like_clip_dir(tmp_path / "vit-h-like", tiny_tokenizer)
    # the SD 2 pipeline folder, as stabilityai/stable-diffusion-2 stores it: text_encoder one layer short
    full = CLIPTextModel.from_pretrained(clip_dir)
    text_config = CLIPConfig.from_pretrained(clip_dir).text_config.to_dict()
    cut = CLIPTextModel(CLIPTextConfig.from_dict({**text_config, "num_hidden_layers": 2}))
    missing, unexpected = cut.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all("layers.2." in k for k in unexpected)
    tiny_stable_diffusion(cut, bang_padded(tiny_tokenizer)).save_pretrained(tmp_path / "sd2")

    out = tmp_path / "e"
    assert main(["export", "--model", str(clip_dir), "--out", str(out), "--targets", "diffusers",
                 "--sd-base", str(tmp_path / "sd2")]) == 0
    assert "Stable Diffusion 2 layout (inferred" in capsys.readouterr().out
    exported = CLIPTextModel.from_pretrained(out / "diffusers" / "text_encoder")
    assert exported.config.num_hidden_layers == 2
    assert CLIPTokenizer.from_pretrained(out / "diffusers" / "tokenizer").pad_token == "!"
    tokens = tiny_tokenizer(["a red circle with a knife", "a blue star"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        hidden = full(**tokens, output_hidden_states=True).hidden_states[-2]
        expected = full.final_layer_norm(hidden) if hasattr(full, "final_layer_norm") else full.text_model.final_layer_norm(hidden)
        got = exported(**tokens).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert (got - full(**tokens).last_hidden_state).abs().max() > 1e-3  # the full tower conditions differently


@pytest.mark.parametrize("safe_slot", ["text_encoder", "text_encoder_2"])
def test_sdxl_export_loads_in_stable_diffusion_xl(tmp_path, tiny_tokenizer, safe_slot, capsys):
    """SDXL: text_encoder = CLIP ViT-L/14 (CLIPTextModel), text_encoder_2 = bigG (CLIPTextModelWithProjection)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    widths = {"text_encoder": 32, "text_encoder_2": 48}  # stand-ins for 768 (ViT-L/14) and 1280 (bigG/14)
    original = {slot: openclip_like_clip_dir(tmp_path / f"orig-{slot}", tiny_tokenizer, hidden_size=width, seed=2)
                for slot, width in widths.items()}
    base = tiny_sdxl(CLIPTextModel.from_pretrained(original["text_encoder"]), tiny_tokenizer,
                     CLIPTextModelWithProjection.from_pretrained(original["text_encoder_2"]), bang_padded(tiny_tokenizer))
    base.save_pretrained(tmp_path / "sdxl")
    safe_dir = openclip_like_clip_dir(tmp_path / "safe", tiny_tokenizer, hidden_size=widths[safe_slot], seed=3)

    out = tmp_path / "e"
    assert main(["export", "--model", str(safe_dir), "--out", str(out), "--targets", "diffusers",
                 "--sd-base", str(tmp_path / "sdxl")]) == 0
    assert f"Stable Diffusion xl layout (inferred: --sd-base is a StableDiffusionXLPipeline); safe text encoder in {safe_slot}/" \
        in capsys.readouterr().out
    folder = out / "diffusers"
    pipe = StableDiffusionXLPipeline.from_pretrained(
        tmp_path / "sdxl", text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))
    image = pipe("a red circle with a knife", num_inference_steps=2, height=16, width=16, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 16, 16, 3)
    safe_source, other = (safe_dir, original["text_encoder_2"]) if safe_slot == "text_encoder" else (original["text_encoder"], safe_dir)
    for slot, source in (("text_encoder", safe_source), ("text_encoder_2", other)):
        loader = CLIPTextModel if slot == "text_encoder" else CLIPTextModelWithProjection
        want = loader.from_pretrained(source).state_dict()
        got = getattr(pipe, slot).state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), slot


def test_t2i_cuts_a_full_depth_safe_encoder_for_an_sd2_pipeline(tmp_path, tiny_tokenizer):
    """`eval t2i --sd <SD 2> --safe-encoder <run>`: the safe tower conditions on its penultimate layer too."""
    from transformers import CLIPConfig, CLIPTextConfig

    from safeclip.eval.t2i import match_pipeline_depth

    clip_dir = openclip_like_clip_dir(tmp_path / "vit-h-like", tiny_tokenizer)
    full = CLIPTextModel.from_pretrained(clip_dir)
    text_config = CLIPConfig.from_pretrained(clip_dir).text_config.to_dict()
    sd2_encoder = CLIPTextModel(CLIPTextConfig.from_dict({**text_config, "num_hidden_layers": 2}))
    cut = match_pipeline_depth(full, sd2_encoder, "safe")
    tokens = tiny_tokenizer(["a red circle with a knife"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        hidden = full(**tokens, output_hidden_states=True).hidden_states[-2]
        norm = full.final_layer_norm if hasattr(full, "final_layer_norm") else full.text_model.final_layer_norm
        torch.testing.assert_close(cut(**tokens).last_hidden_state, norm(hidden), atol=1e-6, rtol=1e-5)
    assert match_pipeline_depth(full, full, "safe") is full
    one_layer = CLIPTextModel(CLIPTextConfig.from_dict({**text_config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="3 layers but the pipeline's has 1"):
        match_pipeline_depth(full, one_layer, "safe")
