"""Evaluation: retrieval protocols and metrics over precomputed embeddings.

    from safeclip.eval import recall_at_k, safe_clip_protocol, write_results
    res = safe_clip_protocol(text_safe, image_safe, text_unsafe, image_unsafe)  # all (N, D)
    write_results({"clip": res}, "results/")  # results/results.json + results/results.md

Submodules: ``retrieval`` (R@k, top-1, the Safe-CLIP / HySAC protocol, tables), ``embed`` (embed
quadruplets with a CLIP bundle), ``nsfw_retrieval`` (found-image NSFW rates, Safe-CLIP Table 3).
Only the tensor-level ``retrieval`` API is re-exported here, so importing ``safeclip.eval`` stays light.
"""

from safeclip.eval.retrieval import (
    DEFAULT_KS,
    format_markdown_table,
    recall_at_k,
    safe_clip_protocol,
    target_ranks,
    top1,
    unsafe_direction,
    write_results,
)

__all__ = [
    "DEFAULT_KS",
    "format_markdown_table",
    "recall_at_k",
    "safe_clip_protocol",
    "target_ranks",
    "top1",
    "unsafe_direction",
    "write_results",
]
