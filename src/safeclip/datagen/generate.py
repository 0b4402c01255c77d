"""Generate unsafe captions t* from safe captions t, balanced over the 20 categories (paper Sec. 3.1).

Each caption gets a requested category (a seeded shuffle of a round-robin list, so category counts differ by
at most one), is formatted with the paper's template and completed by the generator in batches. Work is
sharded across processes with ``accelerate`` and resumable (``safeclip.jobs``: rank r takes rows r, r+P, ...
and appends finished rows to its own ``part-<r>.jsonl`` after every batch; a rerun skips recorded rows).
``merge_parts`` writes ``unsafe_captions.jsonl`` in input order.

    accelerate launch -m safeclip.cli datagen generate --model runs/dpo/merged --captions dataset_coco.json \
        --split train --out runs/visu-text
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safeclip.datagen.prompts import clean_completion, format_prompt
from safeclip.jobs import PartsJob
from safeclip.world.categories import CATEGORIES

CAPTION_KEYS = ("caption", "safe_text", "text", "sentence", "raw")


def assign_categories(n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> list[str]:
    """``n`` categories, each used ``n // len(categories)`` or one more times, in a seeded random order."""
    if not categories:
        raise ValueError("assign_categories needs at least one category")
    out = [categories[i % len(categories)] for i in range(n)]
    random.Random(f"categories:{seed}").shuffle(out)
    return out


def read_captions(path: str | os.PathLike, *, split: str | None = None, key: str | None = None) -> list[dict]:
    """Rows ``{"id", "safe_text"}`` from COCO's Karpathy ``dataset_coco.json`` or any JSONL/CSV of captions.

    Karpathy files: every sentence of every image in ``split`` (``train`` includes ``restval``), id
    ``<cocoid>-<sentid>``. Tables: column ``key`` or the first of caption/safe_text/text/sentence/raw; id from
    an ``id`` column or the row number.
    """
    from safeclip.data.quadruplets import read_rows

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found; give dataset_coco.json or a JSONL/CSV of captions")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "images" in data:
            splits = {"train": {"train", "restval"}}.get(split or "", {split} if split else None)
            rows = []
            for image in data["images"]:
                if splits is not None and image.get("split") not in splits:
                    continue
                for sentence in image.get("sentences", []):
                    rows.append({"id": f"{image.get('cocoid', image.get('imgid'))}-{sentence.get('sentid')}",
                                 "safe_text": sentence["raw"].strip()})
            if not rows:
                raise ValueError(f"no captions for split {split!r} in {path}; Karpathy splits are train/val/test")
            return rows
    table = read_rows(path)
    if not table:
        raise ValueError(f"caption file {path} has no rows")
    column = key or next((k for k in CAPTION_KEYS if k in table[0]), None)
    if column is None or column not in table[0]:
        raise ValueError(f"caption file {path} has no caption column (looked for {key or CAPTION_KEYS}); "
                         "pass --caption-key NAME")
    return [{"id": str(r.get("id", i)), "safe_text": str(r[column]).strip()} for i, r in enumerate(table)]


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], *, do_sample: bool = True, temperature: float = 1.0,
             top_p: float = 1.0, max_new_tokens: int = 48, num_return_sequences: int = 1) -> list[str]:
    """Cleaned completions, ``num_return_sequences`` per prompt (prompt-major order), via ``model.generate``."""
    if not prompts:
        return []
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    batch.pop("token_type_ids", None)
    kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "num_return_sequences": num_return_sequences,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    out = model.generate(**batch, **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return [clean_completion(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def hf_generator(model, tokenizer, **sampling) -> Callable[[list[str]], list[str]]:
    """``prompts -> completions`` with a Hugging Face causal LM (one completion per prompt)."""
    return lambda prompts: complete(model, tokenizer, prompts, **sampling)


def caption_job(out_dir: str | os.PathLike, *, rank: int | None = None, world_size: int | None = None) -> PartsJob:
    """The resumable job of ``generate_dataset``: ``part-<rank>.jsonl`` records keyed by caption id."""
    return PartsJob(out_dir, "part-{rank}.jsonl", key=lambda record: record["id"], rank=rank, world_size=world_size)


def generate_dataset(rows: list[dict], out_dir: str | os.PathLike, generate_fn: Callable[[list[str]], list[str]], *,
                     seed: int = 0, batch_size: int = 16, condition: bool = True, rank: int | None = None,
                     world_size: int | None = None, progress: bool = True) -> Path:
    """Append this rank's unsafe captions to ``out_dir/part-<rank>.jsonl``; returns that path.

    ``rows`` are ``{"id", "safe_text"}`` (ids unique). Rank and world size default to accelerate's
    ``PartialState`` (1 process when not launched). Rows already recorded (by any rank) are skipped.
    """
    job = caption_job(out_dir, rank=rank, world_size=world_size)
    todo = job.todo(list(zip(rows, assign_categories(len(rows), seed))), key=lambda pair: pair[0]["id"])
    with job.appender() as append, tqdm(total=len(todo), desc=f"generate t* (rank {job.rank})",
                                        disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [format_prompt(r["safe_text"], c if condition else None) for r, c in chunk]
            texts = generate_fn(prompts)
            if len(texts) != len(chunk):
                raise ValueError(f"generator returned {len(texts)} texts for {len(chunk)} prompts")
            append([{"id": r["id"], "safe_text": r["safe_text"], "unsafe_text": t, "category": c}
                    for (r, c), t in zip(chunk, texts)])
            bar.update(len(chunk))
    return job.path


def merge_parts(out_dir: str | os.PathLike, rows: Iterable[dict] | None = None) -> Path:
    """Join ``part-*.jsonl`` into ``unsafe_captions.jsonl`` (input order when ``rows`` given); returns it."""
    job = caption_job(out_dir, rank=0, world_size=1)
    order = [r["id"] for r in rows] if rows is not None else sorted(job.finished())
    return job.merge(order, Path(out_dir) / "unsafe_captions.jsonl", what="captions",
                     rerun="rerun generate to finish")
