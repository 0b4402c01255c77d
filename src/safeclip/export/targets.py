"""Exports people can drop in: adapters, a merged HF CLIP folder, a diffusers text encoder, a LLaVA tower.

    safeclip export --model runs/x --out export/ --targets adapters,hf,diffusers,llava

- ``adapters/``: the LoRA adapters alone (``text_adapter/``, ``vision_adapter/``); applying them to the base
  model makes it safe, removing them restores it.
- ``hf/``: a standard Hugging Face CLIP folder (``CLIPModel.from_pretrained``), safetensors, tokenizer, processor.
- ``diffusers/``: the text encoder folder(s) the Stable Diffusion family loads (SD 1.x: every layer; SD 2.x: the
  penultimate layer with the final layer norm; SDXL: ``text_encoder`` + ``text_encoder_2``), see
  ``safeclip.export.stable_diffusion``; ``--sd-version`` / ``--sd-base`` choose it.
- ``llava/vision_tower``: a ``CLIPVisionModel`` folder with its image processor, the layout LLaVA's vision tower loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from peft import PeftModel
from transformers import CLIPVisionModel

from safeclip.errors import ConfigError
from safeclip.models.clip import ClipBundle
from safeclip.export.stable_diffusion import export_stable_diffusion
from safeclip.models.lora import merge_adapters, save_adapters, save_merged_clip

DEFAULT_TARGETS = ("adapters", "hf", "diffusers", "llava")
EXPORT_TARGETS = DEFAULT_TARGETS + ("openclip", "card")  # openclip: safeclip.export.openclip; card: README.md per folder


def export_llava_tower(bundle: ClipBundle, out: Path) -> Path:
    """``vision_tower/``: CLIPVisionModel weights + image processor (LLaVA reads hidden states, not projections)."""
    merged = merge_adapters(bundle)
    vision = CLIPVisionModel(merged.vision.config)
    getattr(vision, "vision_model", vision).load_state_dict(merged.vision.vision_model.state_dict())
    vision.save_pretrained(out / "vision_tower", safe_serialization=True)
    bundle.image_processor.save_pretrained(out / "vision_tower")
    return out


def export_model(bundle: ClipBundle, out_dir: str | os.PathLike, targets=DEFAULT_TARGETS, *,
                 results=(), data: str = "", sd_version: str = "auto",
                 sd_base: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write each of ``targets`` for ``bundle`` (encoders with or without adapters) under ``out_dir``.

    ``sd_version`` / ``sd_base``: the Stable Diffusion family of the diffusers export (see export_stable_diffusion).
    """
    unknown = set(targets) - set(EXPORT_TARGETS)
    if unknown:
        raise ConfigError(f"unknown export target(s) {sorted(unknown)}; choose from {', '.join(EXPORT_TARGETS)}")
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for target in targets:
        if target == "adapters":
            if not any(isinstance(m, PeftModel) for m in (bundle.text, bundle.vision)):
                raise ConfigError("the model has no adapters to export (a merged folder?); give a run folder or "
                                 "--model BASE --adapters DIR, or leave 'adapters' out of --targets")
            written[target] = save_adapters(bundle, out / "adapters")
        elif target == "hf":
            written[target] = save_merged_clip(bundle, out / "hf")
        elif target == "diffusers":
            written[target] = export_stable_diffusion(bundle, out / "diffusers", sd_version, sd_base)
        elif target == "llava":
            written[target] = export_llava_tower(bundle, out / "llava")
        elif target == "openclip":
            from safeclip.export.openclip import export_openclip

            written[target] = export_openclip(bundle, out / "openclip")
    if "card" in targets:  # last, so it can describe every folder written
        from safeclip.export.model_card import write_model_card

        for folder in [out, *written.values()]:
            write_model_card(folder, base=bundle.name, targets=list(written), data=data, results=results,
                             root=out)
        written["card"] = out / "README.md"
    return written
