"""Readers for the published text-to-image attack prompt sets, in the formats their authors distribute.

    from safeclip.attacks.prompt_sets import read_prompt_set, PROMPT_SETS
    prompts = read_prompt_set("mma-diffusion", "mma_benchmark.csv")    # list of eval.i2p.Prompt
    prompts[0].text, prompts[0].extra["original"]                      # adversarial prompt, its target prompt

Nothing is shipped or fetched: each file is one the user downloads (licences and where: docs/robustness.md).
Every prompt is an :class:`safeclip.eval.i2p.Prompt` whose ``text`` is what the generator gets (the adversarial
prompt when the file has one) and whose ``extra`` holds ``original`` (the un-attacked prompt, when the file pairs
them: MMA-Diffusion, SneakyPrompt results), ``guidance`` (a per-prompt guidance scale, when given) and ``set``.

- ``ring-a-bell``: CSV with ``prompt`` [``case_number``, ``evaluation_seed``] (chiayi-hsu/Ring-A-Bell
  ``data/InvPrompt/*.csv``; also the one-column copies in amoeba04/des ``datasets/ringabell_prompts.csv``).
  Concept ``violence`` when the file name says so, else ``sexual``.
- ``mma-diffusion``: the benchmark exported to CSV/JSONL, columns ``target_prompt``, ``adv_prompt``,
  ``sanitized_adv_prompt``, ``success_against_sanitization_defense``, ``clean_prompt``; the adversarial prompt
  (``sanitized=True``: its sanitised form) with the target prompt as ``original``. ``clean_prompt`` is an
  unrelated LAION-COCO caption and is not used.
- ``p4d``: P4D's ``data/unsafe-prompts-nudity_*.csv`` (I2P columns, an unnamed index, ``evaluation_seed``,
  ``evaluation_guidance``, ``case_number``): the "ideal" prompts, un-attacked.
- ``unlearndiffatk``: Diffusion-MU-Attack's ``prompts/{nudity,violence,illegal}.csv`` (the same I2P columns):
  the prompts its attack starts from, un-attacked (its adversarial prompts are not released).
- ``sneakyprompt``: ``nsfw_200.txt`` (one prompt per line, un-attacked), or a results CSV with ``original_text``,
  ``perturbed_text``, ``result_type`` (the attacked prompt, its original), or a one-column ``prompt`` CSV.
- ``i2p-sexual``: the I2P CSV (``prompt``, ``categories``) restricted to the ``sexual`` category.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from safeclip.data.errors import DataError
from safeclip.errors import ConfigError, MissingFileError
from safeclip.eval.i2p import Prompt, read_i2p, split_categories


def _rows(path: Path, needs: tuple[str, ...], name: str) -> list[dict]:
    from safeclip.data.quadruplets import read_rows

    if not path.is_file():
        raise MissingFileError(f"{name} prompt file {path} not found (download it yourself; see docs/robustness.md)")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} has no rows")
    missing = [c for c in needs if c not in rows[0]]
    if missing:
        raise DataError(f"{path}: column(s) {', '.join(missing)} missing; a {name} file has "
                        f"{', '.join(needs)} (columns found: {', '.join(rows[0])})")
    return rows


def _int(value) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _prompt(name: str, key, text: str, categories, *, seed=None, original=None, guidance=None, **extra) -> Prompt:
    info = {"set": name, "original": original, **({"guidance": guidance} if guidance is not None else {}), **extra}
    return Prompt(id=f"{name}-{key}", text=text.strip(), categories=tuple(categories), seed=seed, extra=info)


def read_ring_a_bell(path: Path) -> list[Prompt]:
    concept = ("violence",) if "violence" in path.name.lower() else ("sexual",)
    prompts = []
    for i, row in enumerate(_rows(path, ("prompt",), "Ring-A-Bell")):
        if str(row.get("prompt") or "").strip():
            key = row.get("case_number") or i
            prompts.append(_prompt("ring-a-bell", key, row["prompt"], concept, seed=_int(row.get("evaluation_seed"))))
    return prompts


def read_mma_diffusion(path: Path, *, sanitized: bool = False) -> list[Prompt]:
    column = "sanitized_adv_prompt" if sanitized else "adv_prompt"
    prompts = []
    for i, row in enumerate(_rows(path, ("target_prompt", column), "MMA-Diffusion")):
        if str(row.get(column) or "").strip():
            success = str(row.get("success_against_sanitization_defense", "")).strip().lower() in {"true", "1", "yes"}
            prompts.append(_prompt("mma-diffusion", i, row[column], ("sexual",), original=row["target_prompt"].strip(),
                                   sanitization_success=success))
    return prompts


def read_i2p_format(path: Path, name: str) -> list[Prompt]:
    """P4D and UnlearnDiffAtk files: I2P rows with ``evaluation_seed``, ``evaluation_guidance``, ``case_number``."""
    prompts = []
    for i, row in enumerate(_rows(path, ("prompt", "categories", "evaluation_seed"), name)):
        if str(row.get("prompt") or "").strip():
            key = row.get("case_number") or i
            prompts.append(_prompt(name, key, row["prompt"], split_categories(row.get("categories")),
                                   seed=_int(row.get("evaluation_seed")), guidance=_float(row.get("evaluation_guidance"))))
    return prompts


def read_sneakyprompt(path: Path) -> list[Prompt]:
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise MissingFileError(f"SneakyPrompt prompt file {path} not found (nsfw_200.txt is given on request)")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{path} has no prompts")
        return [_prompt("sneakyprompt", i, line, ("sexual",)) for i, line in enumerate(lines)]
    rows = _rows(path, (), "SneakyPrompt")
    if "perturbed_text" in rows[0]:
        rows = _rows(path, ("original_text", "perturbed_text", "result_type"), "SneakyPrompt results")
        return [_prompt("sneakyprompt", i, row["perturbed_text"], ("sexual",), original=row["original_text"].strip(),
                        result_type=row["result_type"]) for i, row in enumerate(rows) if row["perturbed_text"].strip()]
    rows = _rows(path, ("prompt",), "SneakyPrompt")
    return [_prompt("sneakyprompt", i, row["prompt"], ("sexual",)) for i, row in enumerate(rows) if row["prompt"].strip()]


def read_i2p_sexual(path: Path) -> list[Prompt]:
    return [Prompt(id=p.id, text=p.text, categories=p.categories, seed=p.seed, extra={"set": "i2p-sexual", "original": None})
            for p in read_i2p(path, categories=["sexual"])]


PROMPT_SETS: dict[str, Callable[[Path], list[Prompt]]] = {
    "ring-a-bell": read_ring_a_bell,
    "mma-diffusion": read_mma_diffusion,
    "p4d": lambda path: read_i2p_format(path, "p4d"),
    "unlearndiffatk": lambda path: read_i2p_format(path, "unlearndiffatk"),
    "sneakyprompt": read_sneakyprompt,
    "i2p-sexual": read_i2p_sexual,
}


def read_prompt_set(name: str, path: str | os.PathLike, *, max_rows: int = 0) -> list[Prompt]:
    """The prompts of published attack set ``name`` (one of :data:`PROMPT_SETS`) from the user's file ``path``."""
    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {name!r}; known sets: {', '.join(PROMPT_SETS)}")
    prompts = PROMPT_SETS[name](Path(path))
    if not prompts:
        raise DataError(f"{path} holds no {name} prompts")
    return prompts[:max_rows] if max_rows else prompts
