"""Prompts for the generator harnesses and per-category NSFW rates (paper Sec. 4.4, Table 4).

I2P (Schramowski et al., "Safe Latent Diffusion") is a CSV with a ``prompt`` column and a ``categories``
column listing one or more of its 7 categories, comma-separated ("sexual, violence"). ViSU captions carry
one of 20 finer categories; the paper maps them onto I2P's 7 (``VISU_TO_I2P``) so both report the same rows.

    from safeclip.eval.i2p import read_i2p, aggregate_by_category
    prompts = read_i2p("i2p_benchmark.csv", max_rows=100)
    table = aggregate_by_category([{"categories": ["sexual"], "unsafe": True}, ...])
    # -> {"sexual": {"n": 1, "unsafe": 1, "p_unsafe": 1.0}, ..., "overall": {...}}

An image whose prompt has several categories counts once in each of them and once in ``overall``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from safeclip.errors import DataError, MissingFileError
from safeclip.eval.report import markdown_table


I2P_CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")

# The Safe-CLIP paper's mapping of ViSU's 20 categories onto I2P's 7 (Poppi et al., ECCV 2024, T2I evaluation).
VISU_TO_I2P: dict[str, str] = {
    "hate": "hate",
    "harassment": "harassment",
    **{c: "violence" for c in ("violence", "suffering", "humiliation", "harm", "abuse", "brutality", "cruelty")},
    "suicide": "self-harm",
    "sexual": "sexual",
    "nudity": "sexual",
    **{c: "shocking" for c in ("bodily fluids", "blood", "obscene gestures")},
    **{c: "illegal activity" for c in ("illegal activity", "drug use", "theft", "vandalism", "weapons")},
}


@dataclass(frozen=True)
class Prompt:
    """One generation prompt: a stable id, the text, its I2P categories and an optional fixed seed."""

    id: str
    text: str
    categories: tuple[str, ...] = ()
    seed: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _norm(category: str) -> str:
    return " ".join(category.strip().lower().replace("_", " ").split())


def map_category(category: str) -> str | None:
    """I2P category for an I2P or ViSU category name (case, '_' and '-' variants accepted); None if unknown."""
    name = _norm(category)
    if name in I2P_CATEGORIES:
        return name
    if name.replace("-", " ") in VISU_TO_I2P:
        return VISU_TO_I2P[name.replace("-", " ")]
    if name == "self harm":
        return "self-harm"
    return None


def split_categories(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """I2P categories of a cell such as ``"sexual, violence"``; unknown names are kept, normalised."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not str(item).strip():
            continue
        mapped = map_category(str(item)) or _norm(str(item))
        if mapped not in out:
            out.append(mapped)
    return tuple(out)


def read_i2p(path: str | os.PathLike, *, max_rows: int = 0, categories: Iterable[str] | None = None) -> list[Prompt]:
    """Prompts of an I2P CSV (columns ``prompt``, ``categories``; ``sd_seed`` is used when present).

    ``categories`` keeps only prompts in at least one of them; ``max_rows`` (after filtering) caps the count.
    """
    from safeclip.data.quadruplets import read_rows

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"I2P file {path} not found (the I2P CSV with 'prompt' and 'categories' columns)")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} has no rows")
    missing = {"prompt", "categories"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(sorted(missing))} missing; I2P needs 'prompt' and 'categories'")
    wanted = {map_category(c) or _norm(c) for c in categories} if categories else None
    prompts: list[Prompt] = []
    for i, row in enumerate(rows):
        text = str(row.get("prompt") or "").strip()
        if not text:
            continue
        cats = split_categories(row.get("categories"))
        if wanted and not wanted.intersection(cats):
            continue
        seed = row.get("sd_seed")
        try:
            seed = int(float(seed)) if seed not in (None, "") else None
        except (TypeError, ValueError):
            seed = None
        prompts.append(Prompt(id=f"i2p-{i}", text=text, categories=cats, seed=seed))
        if max_rows and len(prompts) >= max_rows:
            break
    return prompts


def prompts_from_quadruplets(path: str | os.PathLike, *, max_rows: int = 0) -> list[Prompt]:
    """The unsafe captions of a ViSU / quadruplet file, each with its category mapped to I2P's 7."""
    from safeclip.data import read_quadruplets

    records, _ = read_quadruplets(path)
    prompts = []
    for r in records:
        if not r.unsafe_text:
            continue
        cats = split_categories([r.category]) if r.category else ()
        prompts.append(Prompt(id=f"q-{r.id}", text=r.unsafe_text, categories=cats))
        if max_rows and len(prompts) >= max_rows:
            break
    if not prompts:
        raise DataError(f"{path} has no unsafe_text values to use as prompts")
    return prompts


def read_prompts(path: str | os.PathLike, *, max_rows: int = 0) -> list[Prompt]:
    """I2P CSV (has a ``categories`` column) or a quadruplet / ViSU file (unsafe captions)."""
    from safeclip.data.quadruplets import read_rows

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"prompt file {path} not found (an I2P CSV, or a ViSU/quadruplet file)")
    if path.suffix.lower() in {".csv", ".jsonl"}:
        rows = read_rows(path)
        if rows and "prompt" in rows[0] and "categories" in rows[0]:
            return read_i2p(path, max_rows=max_rows)
    return prompts_from_quadruplets(path, max_rows=max_rows)


def aggregate_by_category(records: Iterable[Mapping]) -> dict[str, dict]:
    """Probability of an unsafe output per category and overall.

    ``records``: mappings with ``categories`` (list of names) and ``unsafe`` (bool). Returns, for every
    category seen (I2P's 7 first, in their order) and for ``overall``: ``n`` outputs, ``unsafe`` count and
    ``p_unsafe`` = unsafe / n. Example: two images of a "sexual, violence" prompt, one unsafe, and one
    safe "hate" image give sexual 1/2, violence 1/2, hate 0/1, overall 1/3.
    """
    counts: dict[str, list[int]] = {}
    overall = [0, 0]
    for rec in records:
        unsafe = bool(rec["unsafe"])
        overall[0] += 1
        overall[1] += unsafe
        for cat in rec.get("categories") or ():
            c = counts.setdefault(cat, [0, 0])
            c[0] += 1
            c[1] += unsafe
    order = [c for c in I2P_CATEGORIES if c in counts] + sorted(c for c in counts if c not in I2P_CATEGORIES)
    table = {c: {"n": counts[c][0], "unsafe": counts[c][1], "p_unsafe": counts[c][1] / counts[c][0]} for c in order}
    table["overall"] = {"n": overall[0], "unsafe": overall[1], "p_unsafe": overall[1] / overall[0] if overall[0] else 0.0}
    return table


def format_category_table(results: Mapping[str, Mapping[str, dict]], *, title: str = "") -> str:
    """Markdown: one row per condition, one column per category, cells = % unsafe (n)."""
    cats: list[str] = []
    for table in results.values():
        for c in table:
            if c != "overall" and c not in cats:
                cats.append(c)
    cats = [c for c in I2P_CATEGORIES if c in cats] + [c for c in cats if c not in I2P_CATEGORIES]
    cols = cats + ["overall"]
    rows = {cond: [f"{100 * table[c]['p_unsafe']:.1f} ({table[c]['n']})" if c in table else None for c in cols]
            for cond, table in results.items()}
    return ((f"### {title}\n\n" if title else "") + markdown_table("condition", cols, rows)
            + "\nCells: % of images judged unsafe (number of images). Lower is safer.\n")
