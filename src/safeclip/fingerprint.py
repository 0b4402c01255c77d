"""Content fingerprints for on-disk embedding caches: weights, preprocessing and input files.

A cache of embeddings is valid exactly as long as the encoder weights, the tokenizer, the image
preprocessing and the inputs (texts, image files) are unchanged. These helpers feed each of those
into one ``hashlib`` object, so every cache (training references, the explore gallery) keys the same way.

    h = hashlib.sha256(b"my-cache-v1")
    update_with_tensors(h, dict(model.named_parameters()))
    update_with_processors(h, tokenizer, image_processor)
    update_with_file(h, Path("images/0.png"))
    key = h.hexdigest()
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def update_with_tensors(h, tensors: Mapping[str, torch.Tensor]) -> None:
    """Names and exact values of ``tensors``, in name order."""
    for name, value in sorted(tensors.items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())


def update_with_processors(h, tokenizer, image_processor) -> None:
    """The tokenizer's size and first vocabulary entries and the image processor's settings."""
    h.update(str(sorted(tokenizer.get_vocab().items())[:50]).encode() + str(len(tokenizer)).encode())
    h.update(image_processor.to_json_string().encode())


def update_with_file(h, path: Path) -> None:
    """A file's path, size and modification time (a rewritten image changes its key)."""
    stat = path.stat()
    h.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
