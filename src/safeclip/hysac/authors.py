"""Read the authors' released HySAC checkpoint (``hysac_model.pth`` + ``hysac_bounds.json`` on HF ``aimagelab/HySAC``).

The ``.pth`` is the state dict of the authors' whole ``HySAC`` module (``hysac/models.py``): both
peft-wrapped encoders under ``textual.`` / ``visual.`` (``base_model.model.…``, LoRA weights as
``…lora_A.default.weight``; base weights with or without peft's later ``.base_layer`` step), plus the
scalars ``curv``, ``textual_alpha``, ``visual_alpha``, ``logit_scale`` and the unused ``pixel_mean`` /
``pixel_std``. It is loaded with ``torch.load(weights_only=True)`` (tensors only; no code runs) into
our encoders with the authors' LoRA settings (r 16, alpha 1), merged, and can be written as our
export folder:

    safeclip hysac import --checkpoint hysac_model.pth --bounds hysac_bounds.json \\
        --base openai/clip-vit-large-patch14 --out models/hysac
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from safeclip.errors import DataError, MissingFileError
from safeclip.hysac.model import AUTHORS_LORA, HyperbolicHead, HysacBundle, hysac_bundle
from safeclip.models.clip import ClipBundle, load_clip
from safeclip.models.lora import add_lora, lora_config, merge_adapters

SCALARS = ("curv", "textual_alpha", "visual_alpha", "logit_scale")
IGNORED = ("pixel_mean", "pixel_std")  # the authors normalise pixels in their data loader; unused


def _canonical(key: str) -> str:
    """peft >= 0.7 inserts ``.base_layer`` before a wrapped layer's own weights; 0.4.0 (the authors') did not."""
    return key.replace(".base_layer.", ".")


def load_encoder_state(model: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, source: str) -> None:
    """Copy every ``prefix``-ed tensor of ``state`` into ``model`` (a peft model); exact key sets or ValueError."""
    theirs = {_canonical(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
    ours = {_canonical(k): k for k in model.state_dict()}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    if missing or unexpected:
        raise DataError(f"{source}: the {prefix[:-1]} encoder does not match the model built from the base with the "
                        f"authors' LoRA ({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                        f"e.g. {unexpected[:2]}); check --base (the authors used openai/clip-vit-large-patch14)")
    model.load_state_dict({ours[k]: v for k, v in theirs.items()}, strict=True)


def read_authors_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``hysac_model.pth`` (``weights_only=True``), checked for the authors' layout."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; download hysac_model.pth from the HF repo aimagelab/HySAC")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise DataError(f"{path} holds a {type(state).__name__}, not a state dict (the authors' hysac_model.pth layout)")
    lacking = [k for k in SCALARS if k not in state]
    if lacking or not any(k.startswith("textual.") for k in state) or not any(k.startswith("visual.") for k in state):
        raise DataError(f"{path} is not in the authors' HySAC layout: it lacks {lacking or 'textual.* / visual.* keys'} "
                        f"(expected textual.*, visual.*, {', '.join(SCALARS)})")
    extra = [k for k in state if not k.startswith(("textual.", "visual.")) and k not in SCALARS + IGNORED]
    if extra:
        raise DataError(f"{path}: unexpected top-level keys {extra[:3]} for the authors' HySAC layout")
    return state


def read_bounds(path: str | os.PathLike | None) -> dict | None:
    """``hysac_bounds.json`` ({S, U, V, G: {up_95, low_05, avg}}) or None."""
    if path is None:
        return None
    from safeclip.hysac.traversal import check_bounds

    return check_bounds(json.loads(Path(path).read_text()), str(path))


def load_authors_checkpoint(checkpoint: str | os.PathLike, base: str | os.PathLike = "openai/clip-vit-large-patch14",
                            *, bounds: str | os.PathLike | None = None, lora: dict | None = None) -> HysacBundle:
    """The authors' ``hysac_model.pth`` on ``base`` as our :class:`HysacBundle` (LoRA merged into the encoders)."""
    lora = {**AUTHORS_LORA, **(lora or {})}
    state = read_authors_state(checkpoint)
    clip = load_clip(base)
    encoders = []
    for encoder, prefix in ((clip.text, "textual."), (clip.vision, "visual.")):
        peft_model = add_lora(encoder, lora_config(lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"]))
        load_encoder_state(peft_model, state, prefix, str(checkpoint))
        encoders.append(peft_model)
    merged = merge_adapters(ClipBundle(encoders[0], encoders[1], clip.tokenizer, clip.image_processor, name=str(base)))
    head = HyperbolicHead.from_scalars({k: float(state[k]) for k in SCALARS}, clip.embed_dim)
    return hysac_bundle(merged, head, read_bounds(bounds))
