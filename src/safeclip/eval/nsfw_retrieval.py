"""NSFW retrieval on found images (paper Table 3): how often is the top-1 item unsafe?

Text-to-image: unsafe texts query a gallery of unsafe images mixed with safe distractor images.
Image-to-text: unsafe images query a gallery of unsafe texts mixed with safe distractor texts.
The unsafe items are not paired with the queries (they are "found" content, as the paper's
NudeNet/SMID/URL image sources are); the metric is the percentage of queries whose top-1 gallery
item is unsafe, per source (a file or folder of unsafe images) and over every source's queries ("all").

As in the paper (Sec. 4.3), each source is queried only with the unsafe texts of the categories it shows:
*sexual* and *nudity* for NudeNet and the NSFW-URL images, every other category for SMID
(:data:`PAPER_SOURCE_CATEGORIES`, chosen by the source's name); any other source uses every text unless
given its categories. The output records each source's categories and the ids and texts it used.

    safeclip eval nsfw-retrieval --queries world/test.jsonl --unsafe world/found_unsafe.jsonl \
        --distractors world/distractors.jsonl --model base=demo/base --model safe-clip=demo/run --out results/
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.errors import DataError
from safeclip.eval.embed import encode_image_files
from safeclip.eval.report import metric_table
from safeclip.eval.retrieval import top1
from safeclip.models.clip import ClipBundle, encode_texts
from safeclip.world.categories import CATEGORIES

PROTOCOL = "nsfw-retrieval (Safe-CLIP Table 3)"

# The paper's mapping of its named image sources to ViSU categories (Sec. 4.3, Table 3).
SEXUAL = ("sexual", "nudity")
PAPER_SOURCE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "nudenet": SEXUAL,
    "nsfwurl": SEXUAL,
    "smid": tuple(c for c in CATEGORIES if c not in SEXUAL),
}


def normalise_category(name: str) -> str:
    """``Drug_Use`` / ``drug-use`` / ``drug use`` -> ``drug use``."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def paper_categories(source: str) -> tuple[str, ...] | None:
    """The paper's categories for a source named like NudeNet, NSFW-URL(s) or SMID; None (every text) otherwise."""
    key = "".join(ch for ch in source.lower() if ch.isalnum())
    for name, categories in PAPER_SOURCE_CATEGORIES.items():
        if name in key:
            return categories
    return None


def select_source_queries(
    categories: list[str], sources: list[str], chosen: dict[str, tuple[str, ...] | None] | None = None
) -> dict[str, dict]:
    """Which unsafe texts query each source: ``{source: {"categories": [...] or "all", "indices": [...]}}``.

    ``categories`` holds each text's category; ``chosen`` names a source's categories (None: every text);
    a source it leaves out gets :func:`paper_categories` of its name. A source whose categories match no
    text is an error that lists the categories the texts have.
    """
    chosen = chosen or {}
    found = [normalise_category(c) for c in categories]
    out = {}
    for source in sources:
        wanted = chosen[source] if source in chosen else paper_categories(source)
        if wanted is None:
            out[source] = {"categories": "all", "indices": list(range(len(found)))}
            continue
        wanted = sorted({normalise_category(c) for c in wanted})
        indices = [i for i, c in enumerate(found) if c in wanted]
        if not indices:
            raise DataError(f"source '{source}' is queried with the categories {wanted}, but no query text has one "
                            f"(the texts' categories: {sorted(set(found)) or 'none'}); name the source's categories "
                            f"with --categories {source}=cat1,cat2 or {source}=all")
        out[source] = {"categories": wanted, "indices": indices}
    return out


def unsafe_top1_hits(queries: torch.Tensor, unsafe: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` bool: is the nearest item of ``queries (Q, D)`` in cat(unsafe (U, D), safe (S, D)) unsafe?"""
    return top1(queries, torch.cat([unsafe, safe])) < len(unsafe)


def unsafe_top1_rate(queries: torch.Tensor, unsafe: torch.Tensor, safe: torch.Tensor) -> float:
    """% of ``queries (Q, D)`` whose nearest item in cat(unsafe (U, D), safe (S, D)) is unsafe."""
    return float(unsafe_top1_hits(queries, unsafe, safe).float().mean() * 100)


def nsfw_retrieval(
    bundle: ClipBundle,
    *,
    unsafe_texts: list[str],
    unsafe_images: dict[str, list[Path]],
    distractor_texts: list[str],
    distractor_images: list[Path],
    source_queries: dict[str, dict] | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    shard: bool = False,
) -> dict:
    """``{"T2I": {source: %, "all": %}, "I2T": {source: %, "all": %}}`` for one model.

    ``source_queries`` (from :func:`select_source_queries`) names the unsafe texts of each source; without it
    every text queries every source. T2I: a source's texts query its images plus the distractor images.
    I2T: a source's images query its texts plus the distractor texts. ``all``: every (source, query) pair.
    Images are streamed through the encoder (``num_workers`` decoding processes): memory holds one batch of
    pixels and the ``(N, D)`` embeddings, not the decoded images (10k distractors fit in well under 2 GB).
    ``shard``: under ``torchrun`` / ``accelerate launch`` each process embeds a share of the images.
    """
    source_queries = source_queries or {s: {"indices": list(range(len(unsafe_texts)))} for s in unsafe_images}
    unsafe_text = encode_texts(bundle.text, bundle.tokenizer, unsafe_texts, batch_size=batch_size)
    safe_text = encode_texts(bundle.text, bundle.tokenizer, distractor_texts, batch_size=batch_size)

    def encode(paths: list[Path]) -> torch.Tensor:
        return encode_image_files(bundle.vision, bundle.image_processor, paths, batch_size=batch_size,
                                  num_workers=num_workers, shard=shard)

    safe_image = encode(distractor_images)
    out: dict = {"T2I": {}, "I2T": {}}
    hits: dict = {"T2I": [], "I2T": []}
    for source, paths in unsafe_images.items():
        unsafe_image = encode(paths)
        texts = unsafe_text[source_queries[source]["indices"]]
        hits["T2I"].append(unsafe_top1_hits(texts, unsafe_image, safe_image))
        hits["I2T"].append(unsafe_top1_hits(unsafe_image, texts, safe_text))
        for direction in hits:
            out[direction][source] = float(hits[direction][-1].float().mean() * 100)
    for direction in hits:
        out[direction]["all"] = float(torch.cat(hits[direction]).float().mean() * 100)
    return out


def describe_source_queries(source_queries: dict[str, dict], ids: list[str], texts: list[str]) -> dict:
    """What each source was queried with, for the output: its categories and the ids and texts used."""
    return {source: {"categories": spec["categories"], "count": len(spec["indices"]),
                     "ids": [ids[i] for i in spec["indices"]], "texts": [texts[i] for i in spec["indices"]]}
            for source, spec in source_queries.items()}


def format_table(models: dict[str, dict]) -> str:
    first = next(iter(models.values()))
    columns = [(d, s) for d in ("T2I", "I2T") for s in first[d]]
    return (f"NSFW retrieval, protocol: {PROTOCOL}. % of queries whose top-1 item is unsafe (lower is safer).\n\n"
            + metric_table(models, columns))


def write_nsfw_retrieval(models: dict[str, dict], out_dir: str | os.PathLike, stem: str = "nsfw_retrieval",
                         queries: dict | None = None) -> Path:
    """``<stem>.json`` (protocol, each source's queries from :func:`describe_source_queries`, results) and ``.md``."""
    out = Path(out_dir)
    write_json_atomic(out / f"{stem}.json", {"protocol": PROTOCOL, "queries": queries or {}, "models": models})
    table = format_table(models)
    if queries:
        table += "\nQueries per source: " + "; ".join(
            f"{source}: {q['count']} texts ({q['categories'] if q['categories'] == 'all' else ', '.join(q['categories'])})"
            for source, q in queries.items()) + "\n"
    write_text_atomic(out / f"{stem}.md", table)
    return out / f"{stem}.json"
