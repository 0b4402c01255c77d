"""CLIP models behind one small interface: loading, encoding, LoRA."""

from safeclip.models.clip import (
    KNOWN_CHECKPOINTS,
    ClipBundle,
    ClipLoadError,
    build_tiny_clip,
    encode_images,
    encode_texts,
    load_clip,
)

__all__ = [
    "KNOWN_CHECKPOINTS",
    "ClipBundle",
    "ClipLoadError",
    "build_tiny_clip",
    "encode_images",
    "encode_texts",
    "load_clip",
]
