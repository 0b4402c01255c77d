"""HySAC model: the head's init and clamps, the lift, export folder round trip, the authors' checkpoint layout."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import CLIPModel

from safeclip import hyperbolic as H
from safeclip.hysac.authors import load_authors_checkpoint
from safeclip.hysac.model import AUTHORS_LORA, HyperbolicHead, hysac_bundle, load_hysac, save_hysac
from safeclip.models.clip import encode_images, encode_texts, load_clip
from safeclip.models.lora import add_lora, lora_config
from tests.fixtures import draw

TEXTS = ["a red circle", "a blue square with a weapon"]


def images():
    return [draw("red", "circle", False), draw("blue", "square", True)]


def test_head_initialisation_and_clamps():
    """c = 1, alphas log(D^-1/2), logit scale ln(1/0.07); clamps: c in [0.1, 10], alphas <= 0, scale <= ln 100."""
    head = HyperbolicHead(embed_dim=16)
    assert head.curvature().item() == pytest.approx(1.0)
    assert head.textual_alpha.item() == pytest.approx(math.log(16**-0.5))
    assert head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        head.curv.fill_(5.0)
        head.visual_alpha.fill_(0.7)
        head.logit_scale.fill_(9.0)
    head.clamp_()
    assert head.curvature().item() == pytest.approx(10.0)
    assert head.visual_alpha.item() == 0.0
    assert head.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        head.curv.fill_(-9.0)
        head.logit_scale.fill_(0.0)
    head.clamp_()
    assert head.curvature().item() == pytest.approx(0.1)
    assert head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_encoders_lift_projected_features(tiny_clip):
    """text_embeds of the wrapped encoder = expmap0(exp(alpha) * CLIP's unnormalised text_embeds, c)."""
    head = HyperbolicHead(tiny_clip.embed_dim, curv_init=2.0)
    model = hysac_bundle(tiny_clip, head)
    plain = encode_texts(tiny_clip.text, tiny_clip.tokenizer, TEXTS)
    lifted = encode_texts(model.text, model.tokenizer, TEXTS)
    expected = H.expmap0(plain * head.textual_alpha.exp(), 2.0)
    torch.testing.assert_close(lifted, expected.detach())
    assert H.origin_distance(lifted, 2.0).tolist() == pytest.approx((plain.norm(dim=-1) * tiny_clip.embed_dim**-0.5).tolist(), rel=1e-5)


def test_export_folder_round_trip_and_loads_as_clip(tiny_clip, tmp_path):
    """LoRA encoders + head -> export folder (merged CLIP + hysac.json) -> same hyperboloid embeddings."""
    torch.manual_seed(0)
    lora = lora_config(4, 4.0, 0.0, ["k_proj", "v_proj", "fc1"])
    tiny_clip.text, tiny_clip.vision = add_lora(tiny_clip.text, lora), add_lora(tiny_clip.vision, lora_config(4, 4.0, 0.0, ["k_proj", "v_proj", "fc1"]))
    with torch.no_grad():
        for p in [*tiny_clip.text.parameters(), *tiny_clip.vision.parameters()]:
            if p.requires_grad:
                p.normal_(0, 0.2)
    head = HyperbolicHead(tiny_clip.embed_dim)
    with torch.no_grad():
        head.curv.fill_(math.log(1.7))
        head.visual_alpha.fill_(-1.1)
    bounds = {"S": {"up_95": 0.5, "low_05": 0.1, "avg": 0.3}}
    model = hysac_bundle(tiny_clip, head, bounds)
    save_hysac(model, tmp_path / "hysac")
    loaded = load_hysac(tmp_path / "hysac")
    assert loaded.curvature() == pytest.approx(1.7) and loaded.bounds == bounds
    torch.testing.assert_close(encode_texts(loaded.text, loaded.tokenizer, TEXTS),
                               encode_texts(model.text, model.tokenizer, TEXTS), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encode_images(loaded.vision, loaded.image_processor, images()),
                               encode_images(model.vision, model.image_processor, images()), rtol=1e-4, atol=1e-5)
    CLIPModel.from_pretrained(tmp_path / "hysac")  # the Euclidean encoders load as a plain CLIP
    with pytest.raises(FileNotFoundError, match="not a HySAC model"):
        load_hysac(tmp_path)


class AuthorsLayout(nn.Module):
    """The attribute layout of the authors' ``HySAC`` module (hysac/models.py), built here for a tiny CLIP."""

    def __init__(self, textual, visual, embed_dim):
        super().__init__()
        self.visual, self.textual = visual, textual
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.register_buffer("pixel_mean", torch.tensor((0.485, 0.456, 0.406)).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor((0.229, 0.224, 0.225)).view(-1, 1, 1))
        self.curv = nn.Parameter(torch.tensor(1.4).log())
        self.visual_alpha = nn.Parameter(torch.tensor(embed_dim**-0.5).log() - 0.3)
        self.textual_alpha = nn.Parameter(torch.tensor(embed_dim**-0.5).log() + 0.2)


def authors_checkpoint(clip_dir, path, old_peft_names: bool):
    """Save an ``AuthorsLayout`` state dict with random LoRA weights (``old_peft_names``: peft 0.4.0 keys)."""
    clip = load_clip(clip_dir)
    config = LoraConfig(r=AUTHORS_LORA["r"], lora_alpha=AUTHORS_LORA["alpha"], lora_dropout=0.1,
                        target_modules=AUTHORS_LORA["target_modules"], bias="none")
    module = AuthorsLayout(get_peft_model(clip.text, config), get_peft_model(clip.vision, config), clip.embed_dim)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    module.eval()
    state = module.state_dict()
    if old_peft_names:
        state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    torch.save(state, path)
    return module, clip


@pytest.mark.parametrize("old_peft_names", [True, False])
def test_authors_checkpoint_layout_loads_into_ours(tiny_clip_dir, tmp_path, old_peft_names):
    """Our loader reproduces the authors' module: expmap0(exp(alpha) f, exp(curv)) of their peft encoders."""
    module, clip = authors_checkpoint(tiny_clip_dir, tmp_path / "hysac_model.pth", old_peft_names)
    bounds = tmp_path / "hysac_bounds.json"
    bounds.write_text('{"S": {"up_95": 0.4, "low_05": 0.1, "avg": 0.2}, "V": {"up_95": 0.6, "low_05": 0.2, "avg": 0.4}}')
    ours = load_authors_checkpoint(tmp_path / "hysac_model.pth", tiny_clip_dir, bounds=bounds)
    assert ours.curvature() == pytest.approx(1.4) and ours.bounds["V"]["up_95"] == 0.6
    curv = module.curv.exp().detach()
    with torch.no_grad():
        text_ref = H.expmap0(encode_texts(module.textual, clip.tokenizer, TEXTS) * module.textual_alpha.exp(), curv)
        image_ref = H.expmap0(encode_images(module.visual, clip.image_processor, images()) * module.visual_alpha.exp(), curv)
    torch.testing.assert_close(encode_texts(ours.text, ours.tokenizer, TEXTS), text_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encode_images(ours.vision, ours.image_processor, images()), image_ref, rtol=1e-4, atol=1e-5)
    plain = load_clip(tiny_clip_dir)
    assert not torch.allclose(encode_texts(plain.text, plain.tokenizer, TEXTS) * module.textual_alpha.exp().detach(),
                              encode_texts(ours.euclidean.text, ours.tokenizer, TEXTS) * module.textual_alpha.exp().detach())


def test_authors_loader_rejects_other_files(tiny_clip_dir, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not in the authors' HySAC layout"):
        load_authors_checkpoint(tmp_path / "other.pth", tiny_clip_dir)
    with pytest.raises(FileNotFoundError, match="hysac_model.pth"):
        load_authors_checkpoint(tmp_path / "missing.pth", tiny_clip_dir)
    import argparse

    torch.save({"curv": argparse.Namespace(run="code")}, tmp_path / "code.pth")  # an object, not tensors
    with pytest.raises(Exception, match="(?i)weights_only|unsupported"):  # weights_only=True refuses objects
        load_authors_checkpoint(tmp_path / "code.pth", tiny_clip_dir)


def test_authors_loader_names_a_mismatched_base(tiny_clip_dir, tmp_path, tiny_tokenizer):
    from safeclip.models.clip import build_tiny_clip
    from safeclip.models.lora import save_merged_clip

    authors_checkpoint(tiny_clip_dir, tmp_path / "hysac_model.pth", True)
    other = save_merged_clip(build_tiny_clip(tiny_tokenizer, num_layers=1), tmp_path / "other_base")
    with pytest.raises(ValueError, match="missing keys|unexpected"):
        load_authors_checkpoint(tmp_path / "hysac_model.pth", other)
