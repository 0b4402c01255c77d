"""Automatic preference data for DPO (paper Sec. 3.1, Eq. 3).

For each safe caption t the SFT model samples two unsafe completions; each is scored by

    rank(t*, t) = CLIP-Sim(t*, t) + NSFWRate(t*)                      (Eq. 3)

with CLIP-Sim the cosine similarity of the frozen CLIP text encoder (in [-1, 1]) and NSFWRate a binary
judgment (1 = NSFW) from a pluggable judge (``safeclip.judges``). The higher-ranked completion is *chosen*.
Ties (equal ranks, including identical completions) carry no preference and are dropped; so are empty
completions. Output rows ``{"prompt", "chosen", "rejected", ...}`` are trl's DPO format.

    safeclip datagen preferences --model runs/sft/merged --captions captions.jsonl --clip openai/clip-vit-large-patch14 \
        --judge openai:gpt-3.5-turbo@https://api.openai.com/v1 --out runs/prefs
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.nn.functional as F

from safeclip.errors import OutputExistsError


def eq3_rank(clip_sim: torch.Tensor | list[float], nsfw: torch.Tensor | list[bool]) -> torch.Tensor:
    """Eq. 3: ``clip_sim + nsfw`` elementwise; ``(N,)`` floats and ``(N,)`` booleans -> ``(N,)``."""
    clip_sim = torch.as_tensor(clip_sim, dtype=torch.float32)
    nsfw = torch.as_tensor(nsfw, dtype=torch.float32)
    if clip_sim.shape != nsfw.shape:
        raise ValueError(f"clip_sim {tuple(clip_sim.shape)} and nsfw {tuple(nsfw.shape)} must have the same shape")
    return clip_sim + nsfw


def clip_similarity(clip_bundle, texts_a: list[str], texts_b: list[str], *, batch_size: int = 256) -> torch.Tensor:
    """Cosine similarity ``(N,)`` of CLIP text embeddings of ``texts_a[i]`` and ``texts_b[i]``.

    Batch by batch: memory holds two ``(batch_size, D)`` embeddings and the ``(N,)`` result, so ranking
    every generated caption of a ViSU-size run does not keep ``2 x (N, D)`` embeddings.
    """
    from safeclip.models.clip import encode_texts

    if len(texts_a) != len(texts_b):
        raise ValueError(f"clip_similarity needs equal lists, got {len(texts_a)} and {len(texts_b)}")
    sims = [F.cosine_similarity(encode_texts(clip_bundle.text, clip_bundle.tokenizer, list(texts_a[i:i + batch_size])),
                                encode_texts(clip_bundle.text, clip_bundle.tokenizer, list(texts_b[i:i + batch_size])), dim=-1)
            for i in range(0, len(texts_a), batch_size)]
    return torch.cat(sims) if sims else torch.empty(0)


def score(sources: list[str], completions: list[str], clip_bundle, judge) -> dict[str, list]:
    """Per completion: ``clip_sim`` with its source, ``nsfw`` (judge; None when its reply was unreadable) and
    ``rank`` (Eq. 3; None without a verdict)."""
    sims = clip_similarity(clip_bundle, sources, completions)
    nsfw = list(judge(list(completions))) if completions else []
    ranks = eq3_rank(sims, [bool(x) for x in nsfw]).tolist()
    return {"clip_sim": sims.tolist(), "nsfw": [None if x is None else bool(x) for x in nsfw],
            "rank": [None if x is None else r for x, r in zip(nsfw, ranks)]}


def build_pairs(prompts: list[str], first: list[str], second: list[str], rank_first: list[float],
                rank_second: list[float], *, tolerance: float = 1e-6) -> list[dict]:
    """(prompt, chosen, rejected) rows: chosen is the higher-ranked completion.

    Dropped (documented tie rule): ``|rank difference| <= tolerance``, identical completions, an empty
    completion, or a rank of None (the judge's reply was unreadable). Each row also records both ranks
    (``chosen_rank``, ``rejected_rank``).
    """
    lengths = {len(prompts), len(first), len(second), len(rank_first), len(rank_second)}
    if len(lengths) != 1:
        raise ValueError(f"build_pairs needs lists of one length, got lengths {sorted(lengths)}")
    rows = []
    for prompt, a, b, ra, rb in zip(prompts, first, second, rank_first, rank_second):
        if ra is None or rb is None or not a.strip() or not b.strip() or a.strip() == b.strip() \
                or abs(ra - rb) <= tolerance:
            continue
        (chosen, rc), (rejected, rr) = ((a, ra), (b, rb)) if ra > rb else ((b, rb), (a, ra))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "chosen_rank": float(rc), "rejected_rank": float(rr)})
    return rows


def sample_pairs(prompts: list[str], model, tokenizer, samples_dir: str | os.PathLike, *,
                 batch_size: int = 16, progress: bool = True, **sampling) -> tuple[list[str], list[str]]:
    """Two sampled completions per prompt, saved in ``samples_dir/samples-0.jsonl`` (one line per prompt, synced
    per batch) before anything scores them; a rerun samples only the prompts still missing."""
    from tqdm.auto import tqdm

    from safeclip.datagen.engines import complete
    from safeclip.jobs import PartsJob

    job = PartsJob(samples_dir, "samples-{rank}.jsonl",
                   key=lambda r: r["index"], rank=0, world_size=1)
    todo = job.todo(list(range(len(prompts))), key=int)
    with job.appender() as append:
        for start in tqdm(range(0, len(todo), batch_size), desc="sample pairs", disable=not progress):
            chunk = todo[start:start + batch_size]
            out = complete(model, tokenizer, [prompts[i] for i in chunk], do_sample=True, num_return_sequences=2,
                           **sampling)
            append([{"index": i, "prompt": prompts[i], "first": a, "second": b}
                    for i, a, b in zip(chunk, out[0::2], out[1::2])])
    samples = job.ordered(list(range(len(prompts))), what="samples")
    if any(s["prompt"] != p for s, p in zip(samples, prompts)):
        raise OutputExistsError(f"{job.folder} holds samples of other prompts; use a fresh output folder")
    return [s["first"] for s in samples], [s["second"] for s in samples]


def make_preferences(model, tokenizer, captions: list[str], categories: list[str | None], clip_bundle, judge, *,
                     batch_size: int = 16, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 48,
                     progress: bool = True, samples_dir: str | os.PathLike | None = None) -> list[dict]:
    """Sample two completions per caption (saved in ``samples_dir`` first), score them and return
    :func:`build_pairs` rows."""
    from safeclip.datagen.prompts import format_prompt

    prompts = [format_prompt(c, k) for c, k in zip(captions, categories)]
    with tempfile.TemporaryDirectory() as scratch:
        first, second = sample_pairs(prompts, model, tokenizer, samples_dir or scratch, batch_size=batch_size,
                                     progress=progress, temperature=temperature, top_p=top_p,
                                     max_new_tokens=max_new_tokens)
    s1, s2 = score(captions, first, clip_bundle, judge), score(captions, second, clip_bundle, judge)
    return build_pairs(prompts, [" " + t for t in first], [" " + t for t in second], s1["rank"], s2["rank"])
