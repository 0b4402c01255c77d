"""The SafeR-CLIP "T*->V" retrieval protocol: unsafe text queries against a safe-only image gallery.

    from safeclip.eval.safer_protocol import safer_t2v
    safer_t2v(unsafe_text, safe_image)   # {"R@1": %, "R@5": %, "R@10": %}

Query i is the unsafe caption t*_i, the gallery holds the N safe images v_1..v_N only (no unsafe
images, unlike the Safe-CLIP protocol's V+V* gallery), and the ground truth is v_i, the image paired
with the safe version of the caption. It measures whether a safe model still retrieves the *right*
safe content for an unsafe query (SafeR-CLIP reports R@1 2.8 CLIP / 14.5 Safe-CLIP / 27.9 SafeR-CLIP on
ViSU, and 3.8 / 35.4 / 79.5 on NSFWCaps, whose records ``{image_coco_url, caption, nsfw_caption,
chosen_category}`` give (v, t, t*) triplets once the user has fetched the images).
Ranks follow ``eval/retrieval.py`` (cosine, optimistic tie rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from safeclip.eval.retrieval import recall_at_k

PROTOCOL = "safer-clip T*->V: unsafe text queries, safe-only image gallery, ground truth the paired safe image"
SAFER_KS = (1, 5, 10)


def safer_t2v(unsafe_text: torch.Tensor, safe_image: torch.Tensor, ks: Sequence[int] = SAFER_KS) -> dict[str, float]:
    """R@k (percent) of ``unsafe_text (N, D)`` queries against ``safe_image (N, D)``; target of row i is row i."""
    if unsafe_text.shape[0] != safe_image.shape[0]:
        raise ValueError(f"safer_t2v: {unsafe_text.shape[0]} unsafe texts but {safe_image.shape[0]} safe images; "
                         "they must be aligned pairs (row i of each from the same record)")
    recalls = recall_at_k(unsafe_text, safe_image, torch.arange(unsafe_text.shape[0]), ks)
    return {f"R@{k}": v for k, v in recalls.items()}
