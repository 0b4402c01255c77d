"""Load any Hugging Face CLIP checkpoint as a text encoder and a vision encoder.

Both encoders return *projected* embeddings (``text_embeds`` / ``image_embeds``), the space in
which Safe-CLIP's losses and every retrieval metric live. Loading works by hub name (for users
with a network) or by local folder (always, offline). Tests build tiny models with
:func:`build_tiny_clip`; nothing here downloads unless a hub name is asked for.

    from safeclip.models import load_clip
    clip = load_clip("openai/clip-vit-large-patch14")      # or a local folder
    emb = encode_texts(clip.text, clip.tokenizer, ["a dog on a sofa"])   # (1, 768)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)
from transformers import CLIPImageProcessorPil as ImageProcessor

from safeclip.errors import UserError

# CLIP's preprocessing is always transformers' PIL image processor, named explicitly: the same numbers on every
# machine with or without torchvision, saved as "CLIPImageProcessor" (any CLIP loader reads it). Importing the
# bare name ``CLIPImageProcessor`` without torchvision would print transformers' fallback notice.

# Checkpoints the project knows and documents (HF layout). Any other hub id may still work.
KNOWN_CHECKPOINTS: dict[str, str] = {
    "openai/clip-vit-large-patch14": "OpenAI CLIP ViT-L/14 (paper backbone; SD v1.x text encoder)",
    "openai/clip-vit-large-patch14-336": "OpenAI CLIP ViT-L/14@336 (LLaVA-1.5 vision tower)",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "OpenCLIP ViT-H/14 LAION-2B (HF format; SD v2 text encoder)",
    "aimagelab/safeclip_vit-l_14": "the authors' released Safe-CLIP ViT-L/14 (merged HF CLIP)",
    "aimagelab/safeclip_vit-l_14_336": "the authors' released Safe-CLIP ViT-L/14@336",
}


# Released checkpoints that ship weights only: their tokenizer and image processor come from the base.
PROCESSOR_FALLBACKS: dict[str, str] = {
    "aimagelab/safeclip_vit-l_14": "openai/clip-vit-large-patch14",
    "aimagelab/safeclip_vit-l_14_336": "openai/clip-vit-large-patch14-336",
}


class ClipLoadError(UserError, ValueError):
    """A model name or folder that cannot be loaded as a CLIP checkpoint."""


@dataclass
class ClipBundle:
    """A CLIP checkpoint split into what Safe-CLIP needs."""

    text: CLIPTextModelWithProjection
    vision: CLIPVisionModelWithProjection
    tokenizer: CLIPTokenizer
    image_processor: ImageProcessor
    name: str
    logit_scale: float = 100.0

    @property
    def embed_dim(self) -> int:
        return int(self.text.config.projection_dim)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (a CLIP folder holds both towers; each loader skips the other)
    for the duration of the block; the caller's verbosity and progress-bar setting are restored after it."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_local_folder(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ClipLoadError(
            f"{path} is not a CLIP checkpoint folder: it has no config.json. "
            "Point to a folder written by CLIPModel.save_pretrained (or `safeclip export`)."
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise ClipLoadError(f"{config_file} is not valid JSON ({err}).") from err
    if model_type not in {"clip", "clip_text_model", "clip_vision_model"}:
        raise ClipLoadError(
            f"{path} holds a '{model_type}' model, not CLIP (config.json model_type must be 'clip'). "
            "Use a Hugging Face CLIP folder; OpenCLIP checkpoints must be in HF format."
        )


def _resolve_source(name_or_path: str | os.PathLike) -> str:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ClipLoadError(f"{path} is a file; give the folder that holds config.json.")
        _check_local_folder(path)
        return str(path)
    name = str(name_or_path)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ClipLoadError(
            f"unknown model '{name}': not an existing folder and not a hub id of the form owner/name. "
            f"Known checkpoints: {', '.join(KNOWN_CHECKPOINTS)}; or pass a local CLIP folder."
        )
    return name


def load_clip(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    processor_from: str | os.PathLike | None = None,
) -> ClipBundle:
    """Load a CLIP checkpoint (hub id or local folder) as a :class:`ClipBundle`.

    Raises :class:`ClipLoadError` with the name and the fix when it cannot be loaded.
    ``local_files_only`` defaults to ``HF_HUB_OFFLINE``; a local folder never touches the network.
    ``processor_from`` names where the tokenizer and image processor come from when the checkpoint
    ships weights only (the authors' released Safe-CLIP models use their base's; known ones are filled in).
    """
    source = _resolve_source(name_or_path)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false"}
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_transformers():
            text = CLIPTextModelWithProjection.from_pretrained(source, **kwargs)
            vision = CLIPVisionModelWithProjection.from_pretrained(source, **kwargs)
        tokenizer, image_processor = _load_processors(source, local_files_only, processor_from or PROCESSOR_FALLBACKS.get(str(name_or_path)))
    except (OSError, ValueError, KeyError) as err:
        where = "folder" if Path(source).exists() else "hub id"
        raise ClipLoadError(
            f"could not load CLIP {where} '{source}': {err.__class__.__name__}: {str(err).splitlines()[0]} "
            "(a hub id needs a network or a filled HF cache; offline, pass a local folder)."
        ) from err
    check_vocabulary(tokenizer, text, source)
    logit_scale = _read_logit_scale(source, local_files_only)
    text.eval()
    vision.eval()
    return ClipBundle(text, vision, tokenizer, image_processor, name=str(name_or_path), logit_scale=logit_scale)


def check_vocabulary(tokenizer, text_model, source: str) -> None:
    """A tokenizer with ids beyond the text encoder's embedding table would fail later with an IndexError."""
    rows = text_model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ClipLoadError(f"the tokenizer of '{source}' has {len(tokenizer)} tokens but the text encoder embeds only "
                            f"{rows}: they do not belong together (tokenizer files from another model?)")


def _load_processors(source: str, local_files_only: bool, fallback: str | os.PathLike | None):
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local_files_only)
        image_processor = ImageProcessor.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError, TypeError) as err:
        if fallback is None:
            raise OSError(f"{source} has no tokenizer / image processor files ({str(err).splitlines()[0]}); "
                          "pass processor_from=<the base CLIP> (--processor-from)") from err
        fallback = _resolve_source(fallback)
        tokenizer = CLIPTokenizer.from_pretrained(fallback, local_files_only=local_files_only)
        image_processor = ImageProcessor.from_pretrained(fallback, local_files_only=local_files_only)
    return tokenizer, image_processor


def _read_logit_scale(source: str, local_files_only: bool) -> float:
    """exp of the checkpoint's stored ``logit_scale`` weight: the trained temperature.

    The stored weight wins over ``config.logit_scale_init_value``, which is only the value training
    started from (OpenAI's CLIP configs say 2.6592, a scale of 14.3, while their weight is ln 100).
    Without a stored weight the config's init value is what ``CLIPModel`` would use; without either, 100.
    """
    stored = _stored_tensor(source, "logit_scale", local_files_only)
    if stored is not None:
        return float(stored.float().exp())
    try:
        config = CLIPConfig.from_pretrained(source, local_files_only=local_files_only)
        return float(torch.tensor(config.logit_scale_init_value).exp())
    except (OSError, ValueError):
        return 100.0


def _stored_tensor(source: str, key: str, local_files_only: bool) -> torch.Tensor | None:
    """The tensor ``key`` as stored in the checkpoint's weight files (safetensors, sharded or not, or a .bin)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        try:
            return cached_file(source, filename, local_files_only=local_files_only,
                               _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    index = find("model.safetensors.index.json")
    if index is not None:
        shard = json.loads(Path(index).read_text()).get("weight_map", {}).get(key)
        files = [find(shard)] if shard else []
    else:
        files = [find("model.safetensors")]
    for file in filter(None, files):
        with safe_open(file, framework="pt") as weights:
            if key in weights.keys():
                return weights.get_tensor(key)
    if index is None and files == [None] and (binary := find("pytorch_model.bin")) is not None:
        return torch.load(binary, map_location="cpu", weights_only=True, mmap=True).get(key)
    return None


def build_tiny_clip(
    tokenizer: CLIPTokenizer,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    projection_dim: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
) -> ClipBundle:
    """A randomly initialised small :class:`CLIPModel` around ``tokenizer`` (tests, the offline world)."""
    config = tiny_clip_config(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        projection_dim=projection_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    return bundle_from_clip_model(model, tokenizer, tiny_image_processor(image_size), name="tiny-clip")


def tiny_clip_config(
    tokenizer: CLIPTokenizer,
    *,
    image_size: int,
    patch_size: int,
    hidden_size: int,
    projection_dim: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
) -> CLIPConfig:
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "max_position_embeddings": tokenizer.model_max_length,
        "projection_dim": projection_dim,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "projection_dim": projection_dim,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def tiny_image_processor(image_size: int) -> ImageProcessor:
    """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at ``image_size`` pixels."""
    return ImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def bundle_from_clip_model(
    model: CLIPModel, tokenizer: CLIPTokenizer, image_processor: ImageProcessor, *, name: str
) -> ClipBundle:
    """Split an in-memory :class:`CLIPModel` into a :class:`ClipBundle` (weights are copied)."""
    config = model.config
    text = CLIPTextModelWithProjection(config.text_config)
    text.text_model.load_state_dict(model.text_model.state_dict())
    text.text_projection.load_state_dict(model.text_projection.state_dict())
    vision = CLIPVisionModelWithProjection(config.vision_config)
    vision.vision_model.load_state_dict(model.vision_model.state_dict())
    vision.visual_projection.load_state_dict(model.visual_projection.state_dict())
    text.eval()
    vision.eval()
    return ClipBundle(text, vision, tokenizer, image_processor, name=name, logit_scale=float(model.logit_scale.detach().exp()))


def encode_token_batch(text_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Projected text embeddings ``(B, D)`` for a token batch."""
    return text_model(input_ids=input_ids, attention_mask=attention_mask).text_embeds


def encode_pixel_batch(vision_model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings ``(B, D)`` for a pixel batch ``(B, 3, H, W)``."""
    return vision_model(pixel_values=pixel_values).image_embeds


@torch.no_grad()
def encode_texts(
    text_model: torch.nn.Module, tokenizer: CLIPTokenizer, texts: list[str], *, batch_size: int = 256
) -> torch.Tensor:
    """Projected embeddings ``(len(texts), D)`` of raw strings, in batches, on the model's device."""
    device = next(text_model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
        ).to(device)
        out.append(encode_token_batch(text_model, tokens["input_ids"], tokens["attention_mask"]).float().cpu())
    return torch.cat(out) if out else torch.empty(0, text_model.config.projection_dim)


@torch.no_grad()
def encode_images(
    vision_model: torch.nn.Module, image_processor: ImageProcessor, images: list, *, batch_size: int = 256
) -> torch.Tensor:
    """Projected embeddings ``(len(images), D)`` of PIL images, in batches, on the model's device."""
    device = next(vision_model.parameters()).device
    dtype = next(vision_model.parameters()).dtype
    out = []
    for start in range(0, len(images), batch_size):
        pixels = image_processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        out.append(encode_pixel_batch(vision_model, pixels.to(device, dtype)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, vision_model.config.projection_dim)
