"""The diffusers export: the text encoder(s) each Stable Diffusion family conditions on.

    safeclip export --model runs/vit-l-14 --out export/ --targets diffusers                  # SD 1.x (inferred)
    safeclip export --model runs/vit-h-14 --out export/ --targets diffusers --sd-version 2
    safeclip export --model runs/vit-l-14 --out export/ --targets diffusers --sd-version xl \
        --sd-base stabilityai/stable-diffusion-xl-base-1.0

What each family loads (the folder names are the pipelines' own):

- ``1`` (SD 1.x): ``text_encoder/`` = ``CLIPTextModel`` of CLIP ViT-L/14, every layer. The pipeline reads
  ``last_hidden_state`` (after the final layer norm).
- ``2`` (SD 2.x): ``text_encoder/`` = the OpenCLIP ViT-H/14 text tower cut to its penultimate layer (23 of 24),
  with the final layer norm applied, as ``stabilityai/stable-diffusion-2`` stores it. Its ``last_hidden_state`` is
  the full tower's penultimate hidden state after the final layer norm: what SD 2 was trained on.
- ``xl`` (SDXL): ``text_encoder/`` = ``CLIPTextModel`` (CLIP ViT-L/14) and ``text_encoder_2/`` =
  ``CLIPTextModelWithProjection`` (OpenCLIP bigG/14), both with every layer (the pipeline itself takes their
  penultimate hidden states and text_encoder_2's projected pooled output). The Safe-CLIP model fills the slot
  its text tower fits; the other one, and the tokenizers, are copied from ``--sd-base`` (the original).

``--sd-version auto`` infers the family from the text tower when that is unambiguous (ViT-L/14 -> 1,
OpenCLIP ViT-H/14 -> 2, bigG/14 -> xl) or from ``--sd-base``'s pipeline class and text encoder depth, and says
which it chose and why (printed, and in ``diffusers/safeclip_export.json``). With ``--sd-base`` the tokenizer of
the safe slot is the pipeline's own (SD 2's and SDXL's second tokenizer pad with ``!`` where OpenCLIP's Hugging
Face tokenizer pads with the end token; the padded positions are part of the conditioning).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from safeclip.checkpoint import write_json_atomic
from safeclip.errors import ConfigError
from safeclip.models.clip import ClipBundle
from safeclip.models.lora import merge_adapters

SD_VERSIONS = ("auto", "1", "2", "xl")

# (text hidden size, text layers) of the towers each family ships -> (family, the tower's name)
KNOWN_TOWERS: dict[tuple[int, int], tuple[str, str]] = {
    (768, 12): ("1", "CLIP ViT-L/14 (SD 1.x's text encoder; also SDXL's text_encoder: pass --sd-version xl for that)"),
    (1024, 24): ("2", "OpenCLIP ViT-H/14 (SD 2.x's text encoder)"),
    (1280, 32): ("xl", "OpenCLIP bigG/14 (SDXL's text_encoder_2)"),
}


@dataclass(frozen=True)
class SdLayout:
    """Which family the export is for, why, and (SDXL) which slot the safe text encoder fills."""

    version: str
    reason: str
    slot: str = "text_encoder"


def read_sd_base(sd_base: str | os.PathLike) -> dict:
    """``model_index.json`` of a diffusers pipeline folder or hub id (local files only when offline)."""
    from huggingface_hub import hf_hub_download

    path = Path(sd_base)
    try:
        index = path / "model_index.json" if path.is_dir() else Path(hf_hub_download(str(sd_base), "model_index.json"))
        return json.loads(index.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--sd-base {sd_base}: not a diffusers pipeline folder or hub id with model_index.json "
                          f"({err.__class__.__name__}: {str(err).splitlines()[0]})") from err


def _base_text_config(sd_base: str | os.PathLike, subfolder: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig.from_pretrained(sd_base, subfolder=subfolder)


def choose_layout(bundle: ClipBundle, sd_version: str = "auto", sd_base: str | os.PathLike | None = None) -> SdLayout:
    """The Stable Diffusion family to export for: as asked, else inferred from ``sd_base`` or the text tower."""
    if sd_version not in SD_VERSIONS:
        raise ConfigError(f"--sd-version {sd_version!r}: choose one of {', '.join(SD_VERSIONS)}")
    text = bundle.text.config
    tower = (int(text.hidden_size), int(text.num_hidden_layers))
    if sd_version == "auto":
        version, reason = _infer_version(tower, sd_base)
    else:
        version, reason = sd_version, f"--sd-version {sd_version}"
    slot = "text_encoder"
    if version == "xl":
        if sd_base is None:
            raise ConfigError("an SDXL export needs --sd-base (the SDXL pipeline, e.g. "
                              "stabilityai/stable-diffusion-xl-base-1.0): the other text encoder and the tokenizers "
                              "come from it")
        slot = _sdxl_slot(tower, sd_base)
    return SdLayout(version, reason, slot)


def _infer_version(tower: tuple[int, int], sd_base) -> tuple[str, str]:
    if sd_base is not None:
        index = read_sd_base(sd_base)
        if index.get("_class_name", "").startswith("StableDiffusionXL"):
            return "xl", f"inferred: --sd-base is a {index['_class_name']}"
        layers = int(_base_text_config(sd_base, "text_encoder").num_hidden_layers)
        version = "2" if layers == tower[1] - 1 else "1"
        return version, (f"inferred: --sd-base's text_encoder has {layers} layers, the model's text tower "
                         f"{tower[1]} ({'penultimate layer: SD 2.x' if version == '2' else 'every layer: SD 1.x'})")
    if tower in KNOWN_TOWERS:
        version, name = KNOWN_TOWERS[tower]
        return version, f"inferred: the text tower ({tower[0]} wide, {tower[1]} layers) is {name}"
    return "1", (f"not inferable: the text tower ({tower[0]} wide, {tower[1]} layers) is none of SD's; wrote the "
                 "SD 1.x layout (every layer); pass --sd-version 2 or xl (with --sd-base) for the others")


def _sdxl_slot(tower: tuple[int, int], sd_base) -> str:
    """The SDXL slot whose original text encoder has the safe model's width."""
    for slot in ("text_encoder", "text_encoder_2"):
        if int(_base_text_config(sd_base, slot).hidden_size) == tower[0]:
            return slot
    raise ConfigError(f"the model's text tower is {tower[0]} wide; neither text encoder of --sd-base {sd_base} is "
                      "(SDXL: text_encoder = CLIP ViT-L/14, 768; text_encoder_2 = OpenCLIP bigG/14, 1280)")


def penultimate_text_encoder(text: CLIPTextModel) -> CLIPTextModel:
    """The tower cut to one layer fewer, same embeddings and final layer norm (what SD 2 stores)."""
    config = text.config.__class__.from_dict({**text.config.to_dict(),
                                              "num_hidden_layers": text.config.num_hidden_layers - 1})
    cut = CLIPTextModel(config)
    last = f"encoder.layers.{text.config.num_hidden_layers - 1}."
    state = {k: v for k, v in text.state_dict().items() if last not in k}
    cut.load_state_dict(state)
    return cut.eval()


def safe_text_encoder(bundle: ClipBundle, with_projection: bool):
    """The merged Safe-CLIP text tower as ``CLIPTextModel`` (or ``...WithProjection`` for SDXL's second slot)."""
    merged = merge_adapters(bundle).text
    if with_projection:
        model = CLIPTextModelWithProjection(merged.config)
        model.load_state_dict(merged.state_dict())
        return model.eval()
    model = CLIPTextModel(merged.config)
    getattr(model, "text_model", model).load_state_dict(merged.text_model.state_dict())  # flat in transformers 5
    return model.eval()


def export_stable_diffusion(bundle: ClipBundle, out: Path, sd_version: str = "auto",
                            sd_base: str | os.PathLike | None = None) -> Path:
    """Write the text encoder folders the chosen family loads (see the module docstring); returns ``out``."""
    layout = choose_layout(bundle, sd_version, sd_base)
    tokenizer_folder = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    encoder = safe_text_encoder(bundle, with_projection=layout.slot == "text_encoder_2")
    if layout.version == "2":
        encoder = penultimate_text_encoder(encoder)
    encoder.save_pretrained(out / layout.slot, safe_serialization=True)
    tokenizer = (CLIPTokenizer.from_pretrained(sd_base, subfolder=tokenizer_folder[layout.slot])
                 if sd_base is not None else bundle.tokenizer)
    tokenizer.save_pretrained(out / tokenizer_folder[layout.slot])
    if layout.version == "xl":  # the other slot: the original from the base pipeline
        other = "text_encoder_2" if layout.slot == "text_encoder" else "text_encoder"
        loader = CLIPTextModelWithProjection if other == "text_encoder_2" else CLIPTextModel
        loader.from_pretrained(sd_base, subfolder=other).save_pretrained(out / other, safe_serialization=True)
        CLIPTokenizer.from_pretrained(sd_base, subfolder=tokenizer_folder[other]).save_pretrained(
            out / tokenizer_folder[other])
    write_json_atomic(out / "safeclip_export.json", {"sd_version": layout.version, "reason": layout.reason,
                                                     "safe_slot": layout.slot,
                                                     "sd_base": str(sd_base) if sd_base is not None else None})
    print(f"diffusers: Stable Diffusion {layout.version} layout ({layout.reason}); safe text encoder in {layout.slot}/")
    return out
