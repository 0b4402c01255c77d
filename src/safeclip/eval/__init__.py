"""Evaluation: one entry point over models, and the retrieval protocols and metrics beneath it.

    from safeclip.eval import evaluate
    results = evaluate({"base": bundle}, records, protocols=("safe-clip", "safer-t2v", "safeground"))
    results.write("results/")  # results/results.json + results/results.md

    from safeclip.eval import recall_at_k, safe_clip_protocol, write_results   # tensor level
    res = safe_clip_protocol(safe_text, safe_image, unsafe_text, unsafe_image)  # all (N, D)

Submodules: ``evaluation`` (:func:`evaluate`: embed, then score by protocol; the results object),
``report`` (the Markdown table writer, the seed summary), ``retrieval`` (R@k, top-1, the Safe-CLIP / HySAC
protocol), ``safer_protocol``, ``safeground``, ``zero_shot``, ``embed`` (embed quadruplets with a CLIP
bundle), ``nsfw_retrieval`` (found-image NSFW rates, Safe-CLIP Table 3), ``t2i`` / ``i2t`` (generators).
The tensor-level ``retrieval`` API is imported eagerly; ``evaluate`` and ``EvalResults`` load the model
code on first use, so importing ``safeclip.eval`` stays light.
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

_LAZY = {"evaluate", "EvalResults", "embed_records", "score", "PROTOCOLS"}


def __getattr__(name: str):
    if name in _LAZY:
        from safeclip.eval import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'safeclip.eval' has no attribute {name!r}")


__all__ = [
    "DEFAULT_KS",
    "EvalResults",
    "PROTOCOLS",
    "embed_records",
    "evaluate",
    "format_markdown_table",
    "recall_at_k",
    "safe_clip_protocol",
    "score",
    "target_ranks",
    "top1",
    "unsafe_direction",
    "write_results",
]
