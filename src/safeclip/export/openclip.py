"""OpenCLIP export: a Hugging Face CLIP (Safe-CLIP merged) as an ``open_clip`` state dict + model config.

    safeclip export --model runs/vit-l-14 --out export/ --targets openclip
    # then, with open_clip installed (it needs torchvision):
    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:export/openclip")   # open_clip >= 3
    # or: open_clip.create_model_and_transforms("ViT-L-14-quickgelu",
    #         pretrained="export/openclip/open_clip_model.safetensors")

QuickGELU: OpenAI CLIP (and so Safe-CLIP, which fine-tunes it) uses QuickGELU, ``x * sigmoid(1.702 x)``;
open_clip's plain ``ViT-L-14`` config uses nn.GELU, which silently degrades the embeddings. Load with the
``-quickgelu`` config or ``force_quick_gelu=True`` (``open_clip_config.json`` here sets ``quick_gelu``).

Layout (open_clip ``CLIP`` with ``VisionTransformer`` and a text ``Transformer``; attention is
``nn.MultiheadAttention``, so q/k/v are concatenated into ``in_proj_weight``; projections are stored as
``x @ proj`` matrices, i.e. transposed w.r.t. ``nn.Linear``)::

    visual.conv1.weight (W, 3, P, P)        visual.class_embedding (W,)     visual.positional_embedding (G*G+1, W)
    visual.ln_pre.{weight,bias}             visual.transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj.*,ln_2,mlp.c_fc.*,mlp.c_proj.*}
    visual.ln_post.{weight,bias}            visual.proj (W, D)
    token_embedding.weight (V, Wt)          positional_embedding (C, Wt)    transformer.resblocks.N.*
    ln_final.{weight,bias}                  text_projection (Wt, D)         logit_scale ()  (log of the temperature)

``openclip_to_hf`` inverts the mapping; ``encode_text`` / ``encode_image`` are a small forward pass written
against the open_clip layout alone, used by the tests to show the export gives the same embeddings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from safeclip.errors import DataError

_BLOCK = {  # open_clip resblock key -> HF encoder layer key (non-attention parts)
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
}


def _layers(state: dict, prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _blocks_to_openclip(state: dict, hf: str, oc: str) -> dict:
    out = {}
    for i in range(_layers(state, f"{hf}.encoder.layers.")):
        src, dst = f"{hf}.encoder.layers.{i}.", f"{oc}.resblocks.{i}."
        for o, h in _BLOCK.items():
            out[dst + o] = state[src + h]
        out[dst + "attn.in_proj_weight"] = torch.cat([state[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[dst + "attn.in_proj_bias"] = torch.cat([state[src + f"self_attn.{p}_proj.bias"] for p in "qkv"])
    return out


def hf_to_openclip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` state dict -> open_clip ``CLIP`` state dict (tensors shared where no reshaping is needed)."""
    need = ("text_model.embeddings.token_embedding.weight", "vision_model.embeddings.patch_embedding.weight",
            "text_projection.weight", "visual_projection.weight", "logit_scale")
    missing = [k for k in need if k not in state]
    if missing:
        raise DataError(f"not a Hugging Face CLIPModel state dict (missing {missing[0]}); export the merged model")
    out = {
        "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": state["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": state["vision_model.pre_layrnorm.bias"],
        **_blocks_to_openclip(state, "vision_model", "visual.transformer"),
        "visual.ln_post.weight": state["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": state["vision_model.post_layernorm.bias"],
        "visual.proj": state["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        **_blocks_to_openclip(state, "text_model", "transformer"),
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    return {k: v.contiguous() for k, v in out.items()}


def openclip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``CLIP`` state dict -> HF ``CLIPModel`` state dict (the inverse of ``hf_to_openclip``)."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].T.contiguous(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].T.contiguous(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    for oc, hf in (("visual.transformer", "vision_model"), ("transformer", "text_model")):
        for i in range(_layers(state, f"{oc}.resblocks.")):
            src, dst = f"{oc}.resblocks.{i}.", f"{hf}.encoder.layers.{i}."
            for o, h in _BLOCK.items():
                out[dst + h] = state[src + o]
            for name in ("weight", "bias"):
                for p, chunk in zip("qkv", state[src + f"attn.in_proj_{name}"].chunk(3)):
                    out[dst + f"self_attn.{p}_proj.{name}"] = chunk.contiguous()
    return out


def openclip_model_config(text_config, vision_config, projection_dim: int) -> dict:
    """open_clip ``model_cfg`` (the JSON open_clip's ``model_configs/*.json`` hold) for HF CLIP sub-configs."""
    for cfg, what in ((text_config, "text"), (vision_config, "vision")):
        if cfg.hidden_act not in ("quick_gelu", "gelu"):
            raise DataError(f"{what} activation {cfg.hidden_act!r} has no open_clip equivalent (quick_gelu or gelu)")
    return {
        "embed_dim": int(projection_dim),
        "quick_gelu": vision_config.hidden_act == "quick_gelu",
        "vision_cfg": {"image_size": vision_config.image_size, "layers": vision_config.num_hidden_layers,
                       "width": vision_config.hidden_size, "patch_size": vision_config.patch_size,
                       "head_width": vision_config.hidden_size // vision_config.num_attention_heads,
                       "mlp_ratio": vision_config.intermediate_size / vision_config.hidden_size},
        "text_cfg": {"context_length": text_config.max_position_embeddings, "vocab_size": text_config.vocab_size,
                     "width": text_config.hidden_size, "heads": text_config.num_attention_heads,
                     "layers": text_config.num_hidden_layers,
                     "mlp_ratio": text_config.intermediate_size / text_config.hidden_size,
                     **text_pooling(text_config)},
    }


def text_pooling(text_config) -> dict:
    """open_clip pools text at the highest token id ('argmax'), right for OpenAI's vocabulary, whose end token is
    the last id (and for HF's legacy ``eos_token_id == 2`` configs, which pool the same way). A vocabulary whose
    end token is another id (the offline world's) needs open_clip's ``pool_type: eos`` (open_clip >= 2.24)."""
    eos = text_config.eos_token_id
    if eos is None or eos == 2 or eos == text_config.vocab_size - 1:
        return {}
    return {"pool_type": "eos", "eos_id": int(eos)}


def openclip_layout(model_cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key and shape of open_clip's ``CLIP(**model_cfg).state_dict()`` for a ViT model, from the config alone
    (persistent tensors only: open_clip's ``attn_mask`` buffer is not saved)."""
    v, t, d = model_cfg["vision_cfg"], model_cfg["text_cfg"], model_cfg["embed_dim"]
    vw, tw, grid = v["width"], t["width"], v["image_size"] // v["patch_size"]

    def blocks(prefix: str, width: int, layers: int, mlp_ratio: float) -> dict:
        hidden = int(width * mlp_ratio)
        shapes = {}
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}."
            shapes.update({p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                           p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                           p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                           p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
                           p + "mlp.c_fc.weight": (hidden, width), p + "mlp.c_fc.bias": (hidden,),
                           p + "mlp.c_proj.weight": (width, hidden), p + "mlp.c_proj.bias": (width,)})
        return shapes

    return {
        "positional_embedding": (t["context_length"], tw), "text_projection": (tw, d), "logit_scale": (),
        "visual.class_embedding": (vw,), "visual.positional_embedding": (grid * grid + 1, vw), "visual.proj": (vw, d),
        "visual.conv1.weight": (vw, 3, v["patch_size"], v["patch_size"]),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        **blocks("visual.transformer", vw, v["layers"], v.get("mlp_ratio", 4.0)),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
        "token_embedding.weight": (t["vocab_size"], tw),
        **blocks("transformer", tw, t["layers"], t.get("mlp_ratio", 4.0)),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,),
    }


# ---- a forward pass written against the open_clip layout alone (QuickGELU, pre-norm residual blocks) ----

def _act(x: torch.Tensor, quick_gelu: bool) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x) if quick_gelu else F.gelu(x)


def _transformer(x: torch.Tensor, state: dict, prefix: str, heads: int, quick_gelu: bool, causal: bool) -> torch.Tensor:
    """``x (B, L, W)`` through open_clip resblocks: x + attn(ln_1(x)); x + mlp(ln_2(x))."""
    b, n, w = x.shape
    mask = torch.full((n, n), float("-inf"), device=x.device).triu(1) if causal else None
    for i in range(_layers(state, f"{prefix}.resblocks.")):
        p = f"{prefix}.resblocks.{i}."
        h = F.layer_norm(x, (w,), state[p + "ln_1.weight"], state[p + "ln_1.bias"], eps=1e-5)
        q, k, v = F.linear(h, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, W/H)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(w // heads)
        if mask is not None:
            att = att + mask
        h = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
        x = x + F.linear(h, state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"])
        h = F.layer_norm(x, (w,), state[p + "ln_2.weight"], state[p + "ln_2.bias"], eps=1e-5)
        h = _act(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]), quick_gelu)
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    return x


@torch.no_grad()
def encode_text(state: dict, model_cfg: dict, input_ids: torch.Tensor, *, eot_token_id: int | None = None) -> torch.Tensor:
    """open_clip ``encode_text``: ``(B, L)`` token ids -> ``(B, D)`` (unnormalised). Pools at the EOT token: the
    highest id (open_clip's rule for the OpenAI vocabulary) or the first ``eot_token_id`` when given."""
    x = state["token_embedding.weight"][input_ids] + state["positional_embedding"][: input_ids.shape[1]]
    x = _transformer(x, state, "transformer", model_cfg["text_cfg"]["heads"], model_cfg["quick_gelu"], causal=True)
    x = F.layer_norm(x, (x.shape[-1],), state["ln_final.weight"], state["ln_final.bias"], eps=1e-5)
    eot = input_ids.argmax(-1) if eot_token_id is None else (input_ids == eot_token_id).int().argmax(-1)
    return x[torch.arange(x.shape[0]), eot] @ state["text_projection"]


@torch.no_grad()
def encode_image(state: dict, model_cfg: dict, pixels: torch.Tensor) -> torch.Tensor:
    """open_clip ``encode_image``: ``(B, 3, H, W)`` normalised pixels -> ``(B, D)`` (unnormalised)."""
    v = model_cfg["vision_cfg"]
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=v["patch_size"])  # (B, W, G, G)
    x = x.flatten(2).transpose(1, 2)  # (B, G*G, W)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (x.shape[-1],), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"], eps=1e-5)
    x = _transformer(x, state, "visual.transformer", v["width"] // v["head_width"], model_cfg["quick_gelu"], causal=False)
    x = F.layer_norm(x[:, 0], (x.shape[-1],), state["visual.ln_post.weight"], state["visual.ln_post.bias"], eps=1e-5)
    return x @ state["visual.proj"]


def export_openclip(bundle, out: str | os.PathLike, *, name: str = "safeclip") -> Path:
    """Write ``open_clip_model.safetensors``, ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``, the
    hub layout ``hf-hub:`` loads) and ``<name>.json`` (a bare model config for ``open_clip.add_model_config``)."""
    from safetensors.torch import save_file

    from safeclip.models.lora import merge_adapters, to_clip_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clip = to_clip_model(merge_adapters(bundle))
    state = hf_to_openclip({k: v.detach().cpu() for k, v in clip.state_dict().items()})
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out / "open_clip_model.safetensors"))
    cfg = openclip_model_config(clip.config.text_config, clip.config.vision_config, clip.config.projection_dim)
    proc = bundle.image_processor
    preprocess = {"mean": list(getattr(proc, "image_mean", [0.48145466, 0.4578275, 0.40821073])),
                  "std": list(getattr(proc, "image_std", [0.26862954, 0.26130258, 0.27577711])),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2) + "\n")
    (out / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out
