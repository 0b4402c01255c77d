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
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from safeclip.config import Settings, _f
from safeclip.datagen.engines import completion_problem
from safeclip.datagen.prompts import format_prompt
from safeclip.errors import ConfigError, DataError, MissingFileError
from safeclip.jobs import PartsJob
from safeclip.world.categories import CATEGORIES

CAPTION_KEYS = ("caption", "safe_text", "text", "sentence", "raw")


@dataclass
class CaptionSource(Settings):
    """Which captions become prompts. The paper: COCO with Karpathy's splits, 165k training rows (of 566k
    sentences) and 5k val/test rows with one randomly chosen caption per image."""

    captions: str = _f("", "COCO captions_*.json, Karpathy's dataset_coco.json, or a JSONL/CSV of captions.")
    split: str = _f("", "Karpathy split of dataset_coco.json: train (= train + restval), val or test.")
    caption_key: str = _f("", "Caption column of a JSONL/CSV (default: caption, safe_text, text, sentence or raw).")
    image_root: str = _f("", "Folder of the captions' images (COCO: the folder holding train2017/ and val2017/; "
                             "default for captions_*.json: the folder above annotations/); rows then carry safe_image.")
    one_per_image: bool = _f(False, "Keep one caption per image, drawn with seed (the paper's 5k val/test rows).")
    sample: int = _f(0, "Keep N rows drawn at random with seed, in file order (0 = all; the paper's train: 165k).", ge=0)
    limit: int = _f(0, "Then keep only the first N rows (0 = all; for trial runs).", ge=0)
    sample_seed: int = _f(0, "Seed of one_per_image and sample.")


def assign_categories(n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> list[str]:
    """``n`` categories, each used ``n // len(categories)`` or one more times, in a seeded random order."""
    if not categories:
        raise ValueError("assign_categories needs at least one category")
    out = [categories[i % len(categories)] for i in range(n)]
    random.Random(f"categories:{seed}").shuffle(out)
    return out


def _coco_captions_rows(path: Path, data: dict, image_root: str) -> list[dict]:
    """Rows of an official COCO ``captions_<split>.json`` (``images`` with ``file_name``, ``annotations``).

    Images are looked up in ``image_root`` (or ``image_root/<split>/``); by default in COCO's layout,
    ``<root>/annotations/captions_<split>.json`` beside ``<root>/<split>/``.
    """
    split_folder = path.stem.replace("captions_", "")
    root = Path(image_root) if image_root else path.parent.parent
    files = {image["id"]: image["file_name"] for image in data["images"]}
    rows = []
    for ann in data["annotations"]:
        if ann["image_id"] not in files:
            raise DataError(f"{path}: annotation {ann.get('id')} names image {ann['image_id']}, not in 'images'")
        name = files[ann["image_id"]]
        folder = root if (root / name).is_file() else root / split_folder
        rows.append({"id": f"{ann['image_id']}-{ann['id']}", "safe_text": ann["caption"].strip(),
                     "image_id": str(ann["image_id"]), "safe_image": str((folder / name).resolve())})
    return rows


def _karpathy_rows(path: Path, data: dict, split: str, image_root: str) -> list[dict]:
    """Rows of Karpathy's ``dataset_coco.json``; ``train`` includes ``restval``."""
    splits = {"train": {"train", "restval"}}.get(split, {split} if split else None)
    root = Path(image_root) if image_root else None
    rows = []
    for image in data["images"]:
        if splits is not None and image.get("split") not in splits:
            continue
        image_id = str(image.get("cocoid", image.get("imgid")))
        extra = {"image_id": image_id}
        if root is not None and image.get("filename"):
            extra["safe_image"] = str((root / image.get("filepath", "") / image["filename"]).resolve())
        for sentence in image.get("sentences", []):
            rows.append({"id": f"{image_id}-{sentence.get('sentid')}", "safe_text": sentence["raw"].strip(), **extra})
    if not rows:
        raise DataError(f"no captions for split {split!r} in {path}; Karpathy splits are train/val/test")
    return rows


def read_captions(path: str | os.PathLike, *, split: str | None = None, key: str | None = None,
                  image_root: str = "") -> list[dict]:
    """Rows ``{"id", "safe_text"[, "image_id", "safe_image"]}`` from a caption file, in file order.

    COCO ``captions_*.json``: every annotation, id ``<image_id>-<annotation id>``, ``safe_image`` the image's
    absolute path. Karpathy ``dataset_coco.json``: every sentence of ``split``, id ``<cocoid>-<sentid>``
    (``safe_image`` when ``image_root`` is given: ``<image_root>/<filepath>/<filename>``). Tables: column ``key``
    or the first of caption/safe_text/text/sentence/raw; id from an ``id`` column or the row number;
    ``image_id`` / ``safe_image`` columns are kept.
    """
    from safeclip.data.quadruplets import read_rows

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"caption file {path} not found; give COCO's captions_*.json, dataset_coco.json "
                               "or a JSONL/CSV of captions")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return _coco_captions_rows(path, data, image_root)
        if isinstance(data, dict) and "images" in data:
            return _karpathy_rows(path, data, split or "", image_root)
    table = read_rows(path)
    if not table:
        raise DataError(f"caption file {path} has no rows")
    column = key or next((k for k in CAPTION_KEYS if k in table[0]), None)
    if column is None or column not in table[0]:
        raise DataError(f"caption file {path} has no caption column (looked for {key or CAPTION_KEYS}); "
                         "pass --caption-key NAME")
    return [{"id": str(r.get("id", i)), "safe_text": str(r[column]).strip(),
             **{k: str(r[k]) for k in ("image_id", "safe_image") if r.get(k)}} for i, r in enumerate(table)]


def select_captions(rows: list[dict], source: CaptionSource) -> list[dict]:
    """``source``'s one caption per image, seeded sample and limit, applied in that order; file order kept."""
    rng = random.Random(f"captions:{source.sample_seed}")
    if source.one_per_image:
        if not rows or "image_id" not in rows[0]:
            raise DataError("one_per_image needs rows with an image id (COCO captions JSON, dataset_coco.json or an "
                            "image_id column)")
        by_image: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_image.setdefault(row["image_id"], []).append(i)
        rows = [rows[i] for i in sorted(rng.choice(group) for group in by_image.values())]
    if source.sample:
        if source.sample > len(rows):
            raise ConfigError(f"sample={source.sample} is more than the {len(rows)} captions available")
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), source.sample))]
    return rows[:source.limit] if source.limit else rows


def load_captions(source: CaptionSource) -> list[dict]:
    """Read and select ``source``'s captions; the first row's image must exist when rows carry images."""
    if not source.captions:
        raise ConfigError("give the caption file (--captions): COCO captions_*.json, dataset_coco.json or a JSONL/CSV")
    rows = select_captions(read_captions(source.captions, split=source.split or None,
                                         key=source.caption_key or None, image_root=source.image_root), source)
    if rows and rows[0].get("safe_image") and not Path(rows[0]["safe_image"]).is_file():
        raise MissingFileError(f"image {rows[0]['safe_image']} of caption {rows[0]['id']} not found; pass "
                               "--image-root (the folder holding COCO's image folders) so rows carry their images")
    return rows


@dataclass
class SamplingSettings(Settings):
    """How completions are sampled from the generator (``datagen preferences`` and ``datagen generate``)."""

    dtype: str = _f("auto", "Weights dtype: auto (the checkpoint's on a GPU, float32 on the CPU), float32, bfloat16.",
                    choices=("auto", "float32", "bfloat16", "float16"))
    batch_size: int = _f(64, "Prompts per generate() call (HF; vLLM schedules its own batches).", ge=1)
    temperature: float = _f(1.0, "Sampling temperature.", gt=0.0)
    top_p: float = _f(1.0, "Nucleus sampling p.", gt=0.0, le=1.0)
    max_new_tokens: int = _f(64, "Longest completion in tokens (a caption ends earlier, at a newline or ###).", ge=1)
    condition: bool = _f(True, "Name the requested category in the prompt.")
    seed: int = _f(0, "Seed of the category assignment and of sampling.")


@dataclass
class GenerationSettings(SamplingSettings):
    """How unsafe captions are generated (``datagen generate``)."""

    engine: str = _f("hf", "hf (transformers generate with stop strings; the fallback) or vllm (vLLM's offline "
                           "engine, pip install 'safeclip[vllm]'; untested in this repository).",
                  choices=("hf", "vllm"))
    retries: int = _f(2, "Regenerate an empty, refusing or echoing completion up to this many times; rows still bad "
                         "are recorded but left out of unsafe_captions.jsonl (counts in generation_report.json).",
                   ge=0)
    shard: str = _f("", "R/N: run shard R of N without torch.distributed (one process per GPU, e.g. for vLLM); "
                        "empty = accelerate's process index and count.")


def parse_shard(shard: str) -> tuple[int | None, int | None]:
    """``"R/N"`` -> ``(R, N)``; empty -> ``(None, None)`` (accelerate's process index and count)."""
    if not shard:
        return None, None
    rank, sep, count = shard.partition("/")
    if not (sep and rank.isdigit() and count.isdigit() and int(rank) < int(count)):
        raise ConfigError(f"shard must be R/N with 0 <= R < N (e.g. 0/8), got {shard!r}")
    return int(rank), int(count)


def caption_job(out_dir: str | os.PathLike, *, rank: int | None = None, world_size: int | None = None) -> PartsJob:
    """The resumable job of ``generate_dataset``: ``part-<rank>.jsonl`` records keyed by caption id."""
    return PartsJob(out_dir, "part-{rank}.jsonl", key=lambda record: record["id"], rank=rank, world_size=world_size)


def complete_checked(prompts: list[str], sources: list[str], generate_fn: Callable[[list[str]], list[str]],
                     retries: int) -> tuple[list[str], list[list[str]]]:
    """Completions of ``prompts``, regenerating those :func:`completion_problem` rejects up to ``retries`` times;
    returns the texts and, per prompt, the problems met (the last one still stands if the text is bad)."""
    texts = list(generate_fn(prompts))
    if len(texts) != len(prompts):
        raise ValueError(f"generator returned {len(texts)} texts for {len(prompts)} prompts")
    problems: list[list[str]] = [[] for _ in prompts]
    for attempt in range(retries + 1):
        bad = []
        for i, (source, text) in enumerate(zip(sources, texts)):
            problem = completion_problem(source, text)
            if problem and len(problems[i]) == attempt:
                problems[i].append(problem)
                bad.append(i)
        if not bad or attempt == retries:
            break
        for i, text in zip(bad, generate_fn([prompts[i] for i in bad])):
            texts[i] = text
    return texts, problems


def generate_dataset(rows: list[dict], out_dir: str | os.PathLike, generate_fn: Callable[[list[str]], list[str]], *,
                     seed: int = 0, batch_size: int = 16, condition: bool = True, retries: int = 2,
                     rank: int | None = None, world_size: int | None = None, progress: bool = True) -> Path:
    """Append this rank's unsafe captions to ``out_dir/part-<rank>.jsonl``; returns that path.

    ``rows`` are ``{"id", "safe_text"[, "image_id", "safe_image"]}`` (ids unique; image fields are carried into
    the records). Each record has ``problems`` (what regeneration met) and ``problem`` (what is still wrong,
    else None). Rank and world size default to accelerate's ``PartialState``. Rows already recorded are skipped.
    """
    job = caption_job(out_dir, rank=rank, world_size=world_size)
    todo = job.todo(list(zip(rows, assign_categories(len(rows), seed))), key=lambda pair: pair[0]["id"])
    with job.appender() as append, tqdm(total=len(todo), desc=f"generate t* (rank {job.rank})",
                                        disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [format_prompt(r["safe_text"], c if condition else None) for r, c in chunk]
            texts, problems = complete_checked(prompts, [r["safe_text"] for r, _ in chunk], generate_fn, retries)
            append([{"id": r["id"], "safe_text": r["safe_text"], "unsafe_text": t, "category": c,
                     **{k: r[k] for k in ("image_id", "safe_image") if k in r},
                     "problems": p, "problem": completion_problem(r["safe_text"], t)}
                    for (r, c), t, p in zip(chunk, texts, problems)])
            bar.update(len(chunk))
    return job.path


def generation_counts(records: list[dict]) -> dict:
    """How many rows met each problem (regenerated) and how many are still bad (left out), by problem."""
    met: dict[str, int] = {}
    left: dict[str, int] = {}
    for record in records:
        for problem in record.get("problems", []):
            met[problem] = met.get(problem, 0) + 1
        if record.get("problem"):
            left[record["problem"]] = left.get(record["problem"], 0) + 1
    return {"rows": len(records), "kept": len(records) - sum(left.values()), "met": met, "left_out": left}


def merge_parts(out_dir: str | os.PathLike, rows: Iterable[dict] | None = None) -> Path:
    """Join ``part-*.jsonl`` into ``unsafe_captions.jsonl`` (input order when ``rows`` given) without the rows
    still empty, refusing or echoing; their counts go to ``generation_report.json``. Returns the JSONL path."""
    from safeclip.checkpoint import write_json_atomic, write_text_atomic

    job = caption_job(out_dir, rank=0, world_size=1)
    order = [r["id"] for r in rows] if rows is not None else sorted(job.finished())
    records = job.ordered(order, what="captions", rerun="rerun generate to finish")
    write_json_atomic(Path(out_dir) / "generation_report.json", generation_counts(records))
    kept = [{k: v for k, v in r.items() if k not in ("problems", "problem")} for r in records if not r.get("problem")]
    return write_text_atomic(Path(out_dir) / "unsafe_captions.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
