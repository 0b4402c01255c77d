"""Generate unsafe captions t* from safe captions t, balanced over the 20 categories (paper Sec. 3.1).

Each caption gets a requested category (a seeded shuffle of a round-robin list, so category counts differ by
at most one), is formatted with the paper's template and completed by the generator in batches. Work is
sharded across processes with ``accelerate`` (rank r takes rows r, r+P, ...); each rank appends finished
rows to its own ``part-<r>.jsonl`` and flushes after every batch, so an interrupted run resumes where it
stopped, never duplicating or losing a row (a half-written last line is dropped and redone).
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


def done_ids(path: Path) -> set[str]:
    """Ids of complete rows already in an append-only JSONL; truncates a half-written last line."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    return {json.loads(line)["id"] for line in data.decode("utf-8").splitlines() if line.strip()}


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


def generate_dataset(rows: list[dict], out_dir: str | os.PathLike, generate_fn: Callable[[list[str]], list[str]], *,
                     seed: int = 0, batch_size: int = 16, condition: bool = True, rank: int | None = None,
                     world_size: int | None = None, progress: bool = True) -> Path:
    """Append this rank's unsafe captions to ``out_dir/part-<rank>.jsonl``; returns that path.

    ``rows`` are ``{"id", "safe_text"}`` (ids unique). Rank and world size default to accelerate's
    ``PartialState`` (1 process when not launched). Rows already in the part file are skipped.
    """
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("caption ids must be unique to resume safely; give an id column without repeats")
    if rank is None or world_size is None:
        from accelerate import PartialState

        state = PartialState()
        rank, world_size = state.process_index, state.num_processes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part = out / f"part-{rank}.jsonl"
    categories = assign_categories(len(rows), seed)
    mine = [(r, c) for i, (r, c) in enumerate(zip(rows, categories)) if i % world_size == rank]
    finished = done_ids(part)
    todo = [(r, c) for r, c in mine if r["id"] not in finished]
    with open(part, "a", encoding="utf-8") as handle, \
            tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"generate t* (rank {rank})",
                 disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [format_prompt(r["safe_text"], c if condition else None) for r, c in chunk]
            texts = generate_fn(prompts)
            if len(texts) != len(chunk):
                raise ValueError(f"generator returned {len(texts)} texts for {len(chunk)} prompts")
            handle.write("".join(json.dumps({"id": r["id"], "safe_text": r["safe_text"], "unsafe_text": t,
                                             "category": c}) + "\n" for (r, c), t in zip(chunk, texts)))
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    return part


def merge_parts(out_dir: str | os.PathLike, rows: Iterable[dict] | None = None) -> Path:
    """Join ``part-*.jsonl`` into ``unsafe_captions.jsonl`` (input order when ``rows`` given); returns it."""
    from safeclip.checkpoint import write_text_atomic

    out = Path(out_dir)
    found: dict[str, str] = {}
    for part in sorted(out.glob("part-*.jsonl")):
        done_ids(part)  # drop a torn last line
        for line in part.read_text(encoding="utf-8").splitlines():
            if line.strip():
                found.setdefault(json.loads(line)["id"], line)
    order = [r["id"] for r in rows] if rows is not None else sorted(found)
    missing = [i for i in order if i not in found]
    if missing:
        raise ValueError(f"{len(missing)} captions not generated yet (e.g. {missing[:3]}); rerun generate to finish")
    return write_text_atomic(out / "unsafe_captions.jsonl", "".join(found[i] + "\n" for i in order))
