"""LoRA on CLIP encoders with peft: add, toggle (reversible safety), save, load and merge.

Safe-CLIP fine-tunes both encoders with LoRA (paper Sec. 4.1: r=16). The frozen references
T0 / V0 of the paper are the same modules with the adapters switched off
(:func:`adapters_disabled`): base weights never receive gradients, so the references cannot move.

Adapters saved alone are small; applying them makes a base CLIP safe, removing them restores it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import CLIPConfig, CLIPModel

from safeclip.errors import MissingFileError
from safeclip.models.clip import ClipBundle

TEXT_ADAPTER_DIR = "text_adapter"
VISION_ADAPTER_DIR = "vision_adapter"


def lora_config(r: int, alpha: float, dropout: float, target_modules: list[str]) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")


@contextlib.contextmanager
def quiet_checkpointing_alias() -> Iterator[None]:
    """Hide the one FutureWarning peft and trl cause by reading transformers' deprecated
    ``is_gradient_checkpointing`` (when peft wraps a model, when trl's DPO step toggles checkpointing): their
    code, not ours, and a clean run prints no warnings. Scoped: the caller's warning filters come back on exit."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def add_lora(encoder: torch.nn.Module, config: LoraConfig) -> PeftModel:
    """Wrap ``encoder`` with LoRA adapters; only the adapters are trainable afterwards."""
    with quiet_checkpointing_alias():
        model = get_peft_model(encoder, config)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


@contextlib.contextmanager
def adapters_disabled(*models: torch.nn.Module) -> Iterator[None]:
    """Run the base model (T0 / V0) of every PeftModel given; plain modules pass through."""
    with contextlib.ExitStack() as stack:
        for model in models:
            if isinstance(model, PeftModel):
                stack.enter_context(model.disable_adapter())
        yield


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def base_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" not in n}


def save_adapters(bundle: ClipBundle, out_dir: str | os.PathLike) -> Path:
    """Write the text and vision adapters (safetensors) under ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub, model in ((TEXT_ADAPTER_DIR, bundle.text), (VISION_ADAPTER_DIR, bundle.vision)):
        if isinstance(model, PeftModel):
            model.save_pretrained(out / sub, safe_serialization=True)
    return out


def has_adapters(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / TEXT_ADAPTER_DIR).is_dir() or (folder / VISION_ADAPTER_DIR).is_dir()


def apply_adapters(bundle: ClipBundle, adapter_dir: str | os.PathLike, *, trainable: bool = False) -> ClipBundle:
    """Return a bundle whose encoders carry the adapters in ``adapter_dir`` (a copy; ``bundle`` is untouched)."""
    adapter_dir = Path(adapter_dir)
    if not has_adapters(adapter_dir):
        raise MissingFileError(
            f"{adapter_dir} holds no Safe-CLIP adapters (expected {TEXT_ADAPTER_DIR}/ or {VISION_ADAPTER_DIR}/, "
            "as written by `safeclip train` in <run>/best/ or by `safeclip export --adapters`)."
        )
    out = copy.copy(bundle)
    text, vision = copy.deepcopy(bundle.text), copy.deepcopy(bundle.vision)
    with quiet_checkpointing_alias():
        if (adapter_dir / TEXT_ADAPTER_DIR).is_dir():
            text = PeftModel.from_pretrained(text, adapter_dir / TEXT_ADAPTER_DIR, is_trainable=trainable)
        if (adapter_dir / VISION_ADAPTER_DIR).is_dir():
            vision = PeftModel.from_pretrained(vision, adapter_dir / VISION_ADAPTER_DIR, is_trainable=trainable)
    out.text, out.vision = text.eval(), vision.eval()
    return out


def merge_adapters(bundle: ClipBundle) -> ClipBundle:
    """A bundle of plain encoders with the LoRA updates folded into the weights (a copy)."""
    out = copy.copy(bundle)
    encoders = []
    for model in (bundle.text, bundle.vision):
        if isinstance(model, PeftModel):
            model = copy.deepcopy(model).merge_and_unload()
        encoders.append(model.eval())
    out.text, out.vision = encoders
    return out


def remove_adapters(bundle: ClipBundle) -> ClipBundle:
    """The base encoders under the adapters, unchanged (safety toggled off; a copy)."""
    out = copy.copy(bundle)
    encoders = []
    for model in (bundle.text, bundle.vision):
        if isinstance(model, PeftModel):
            model = copy.deepcopy(model).unload()  # drop the LoRA layers without merging them
        encoders.append(model.eval())
    out.text, out.vision = encoders
    return out


def to_clip_model(bundle: ClipBundle) -> CLIPModel:
    """Assemble a :class:`CLIPModel` from the bundle's (merged) encoders."""
    merged = merge_adapters(bundle)
    text, vision = merged.text, merged.vision
    config = CLIPConfig(
        text_config=text.config.to_dict(),
        vision_config=vision.config.to_dict(),
        projection_dim=text.config.projection_dim,
        logit_scale_init_value=float(torch.tensor(bundle.logit_scale).log()),
    )
    model = CLIPModel(config)
    model.text_model.load_state_dict(text.text_model.state_dict())
    model.text_projection.load_state_dict(text.text_projection.state_dict())
    model.vision_model.load_state_dict(vision.vision_model.state_dict())
    model.visual_projection.load_state_dict(vision.visual_projection.state_dict())
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.tensor(bundle.logit_scale).log()))
    return model.eval()


def save_merged_clip(bundle: ClipBundle, out_dir: str | os.PathLike) -> Path:
    """Write a standard Hugging Face CLIP folder (safetensors, tokenizer, image processor)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_clip_model(bundle).save_pretrained(out, safe_serialization=True)
    bundle.tokenizer.save_pretrained(out)
    bundle.image_processor.save_pretrained(out)
    return out
