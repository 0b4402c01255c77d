"""Quadruplet datasets (safe image, safe text, unsafe image, unsafe text, category).

Four input formats, one record type:

- ``visu``: the authors' ViSU JSON, ``{"<idx>": {"coco_id", "safe", "nsfw", "nsfw_im_path", "tag"}}``
  (optionally wrapped as ``{"info": ..., "data": {...}}``); safe images resolved as
  ``<image_root>/{train2017,val2017,test2017}/<coco_id:012d>.jpg``, unsafe images as
  ``<unsafe_image_root>/<nsfw_im_path>``.
- ``visu-text``: ViSU-Text rows (JSON list, JSONL or CSV) with ``safe``, ``nsfw``, ``tag`` and an id
  (``incremental_id``, else ``id``; ``coco_id`` when present gives the safe image). No unsafe images:
  text-only redirection.
- ``nsfwcaps``: SafeR-CLIP's NSFWCaps rows (JSON list, JSONL or CSV) ``{image_coco_url, caption, nsfw_caption,
  chosen_category}``: (v, t, t*) triplets, no unsafe images; the user fetches the images and keeps their file
  names, found as ``<image_root>/<last part of image_coco_url>``.
- ``table``: JSONL or CSV with the columns ``safe_text`` (required), ``unsafe_text``, ``safe_image``,
  ``unsafe_image``, ``category``, ``id``; image paths relative to ``image_root`` (default: the file's folder).

    records, report = read_quadruplets("world/train.jsonl")
    print(report.summary())

A missing file or corrupt image names the file and the row; a schema error names the missing
column; ``skip_bad_rows`` skips and counts instead of failing, naming each skipped row's id and reason in the
summary. Nothing is dropped silently. ViSU as downloaded holds one such row (id 109551, an empty ``nsfw``
text), so the shipped real-data configs set ``data.skip_bad_rows: true``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from safeclip.data.errors import DataError
from safeclip.jsonl import parse_json, read_jsonl, read_text

MODALITIES = ("safe_text", "unsafe_text", "safe_image", "unsafe_image")
COCO_SPLITS = ("train2017", "val2017", "test2017")
# CLIP reads at most 77 tokens; longer captions are cut to this many characters before tokenising, so a
# pathological caption cannot take gigabytes in the tokenizer (the count of cut captions is reported).
MAX_TEXT_CHARS = 4096


@dataclass(frozen=True)
class Quadruplet:
    id: str
    safe_text: str | None
    unsafe_text: str | None
    safe_image: Path | None
    unsafe_image: Path | None
    category: str = ""
    row: int = 0  # 1-based position in the source file, for error messages


@dataclass
class ReadReport:
    """What reading a dataset found: rows kept, rows skipped (with reasons) and modalities present."""

    source: str
    rows: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    modalities: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)  # what was decided about the data as a whole

    @property
    def text_only(self) -> bool:
        return "safe_image" not in self.modalities and "unsafe_image" not in self.modalities

    def missing(self) -> list[str]:
        return [m for m in MODALITIES if m not in self.modalities]

    def skipped_summary(self, named: int = 10) -> str:
        """How many rows were skipped, naming the first ``named`` with their id and reason."""
        listed = "; ".join(f"row {row}: {reason}" for row, reason in self.skipped[:named])
        more = f"; and {len(self.skipped) - named} more" if len(self.skipped) > named else ""
        return f"{len(self.skipped)} bad rows skipped ({listed}{more})"

    def summary(self, named: int = 10) -> str:
        """One line: rows kept, the first ``named`` skipped rows with their id and reason, missing modalities."""
        parts = [f"{self.source}: {self.rows} quadruplets"]
        if self.skipped:
            parts.append(self.skipped_summary(named))
        if self.missing():
            parts.append("missing " + ", ".join(self.missing()) + " -> the loss terms that need them are off")
        return "; ".join(parts + self.notes)


def _is_nsfwcaps(columns) -> bool:
    return "nsfw_caption" in columns and "image_coco_url" in columns


def detect_format(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        header = next(csv.reader(io.StringIO(read_text(path), newline="")), [])
        if _is_nsfwcaps(header):
            return "nsfwcaps"
        return "visu-text" if "nsfw" in header and "safe_text" not in header else "table"
    if path.suffix.lower() == ".jsonl":
        first = _first_jsonl_row(path)
        if _is_nsfwcaps(first):
            return "nsfwcaps"
        return "visu-text" if "nsfw" in first and "safe_text" not in first else "table"
    data = _load_json(path)
    if isinstance(data, dict):
        data = data.get("data", data)
        sample = next(iter(data.values()), {}) if data else {}
        return "visu" if isinstance(sample, dict) and "coco_id" in sample and "nsfw_im_path" in sample else "visu-text"
    if data and isinstance(data[0], dict) and _is_nsfwcaps(data[0]):
        return "nsfwcaps"
    return "visu-text" if data and "nsfw" in data[0] and "safe_text" not in data[0] else "table"


def _first_jsonl_row(path: Path) -> dict:
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            return parse_json(line, f"{path} line {lineno}")
    return {}


def _load_json(path: Path):
    try:
        return parse_json(read_text(path), str(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); expected ViSU JSON or a JSON list of rows") from err


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL, CSV, JSON list or JSON object-of-rows file, in order."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(read_text(path), newline=""))]
    if suffix == ".jsonl":
        return read_jsonl(path)
    data = _load_json(path)
    if isinstance(data, dict):
        data = data.get("data", data)
        return [dict(v, _key=k) for k, v in data.items()]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list or object of rows, got {type(data).__name__}")
    return data


def _text(value) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _require_columns(path: Path, rows: list[dict], required: tuple[str, ...], fmt: str) -> None:
    if not rows:
        raise DataError(f"{path} has no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(missing)} missing for format '{fmt}' (found: {', '.join(sorted(rows[0]))}). "
            "Table files need safe_text [, unsafe_text, safe_image, unsafe_image, category]; "
            "ViSU files need coco_id, safe, nsfw, nsfw_im_path, tag."
        )


def _coco_image(image_root: Path, coco_id, where: str) -> Path:
    try:
        number = int(str(coco_id).strip())
    except ValueError as err:
        raise DataError(f"{where}: coco_id {coco_id!r} is not a number (COCO images are <coco_id:012d>.jpg)") from err
    name = f"{number:012d}.jpg"
    for split in COCO_SPLITS:
        candidate = image_root / split / name
        if candidate.exists():
            return candidate
    return image_root / COCO_SPLITS[0] / name  # reported as missing by validation


def _first_id(row: dict, keys: tuple[str, ...], default: int) -> str:
    """The first of ``keys`` the row holds (0 counts), else the row number."""
    for key in keys:
        if _text(row.get(key)) is not None:
            return str(row[key]).strip()
    return str(default)


def _records_from_rows(path: Path, rows: list[dict], fmt: str, image_root: Path, unsafe_root: Path) -> list[Quadruplet]:
    records = []
    for i, row in enumerate(rows, 1):
        if fmt == "table":
            safe_image = _text(row.get("safe_image"))
            unsafe_image = _text(row.get("unsafe_image"))
            records.append(Quadruplet(
                id=str(row.get("id") or i), safe_text=_text(row.get("safe_text")), unsafe_text=_text(row.get("unsafe_text")),
                safe_image=image_root / safe_image if safe_image else None,
                unsafe_image=image_root / unsafe_image if unsafe_image else None,
                category=str(row.get("category") or ""), row=i))
        elif fmt == "visu":
            unsafe_image = _text(row.get("nsfw_im_path"))
            records.append(Quadruplet(
                id=str(row.get("_key", i)), safe_text=_text(row.get("safe")), unsafe_text=_text(row.get("nsfw")),
                safe_image=_coco_image(image_root, row["coco_id"], f"{path} row {i}") if _text(row.get("coco_id")) else None,
                unsafe_image=unsafe_root / unsafe_image if unsafe_image else None,
                category=str(row.get("tag") or ""), row=i))
        elif fmt == "nsfwcaps":
            url = _text(row.get("image_coco_url"))
            records.append(Quadruplet(
                id=str(row.get("id") or i), safe_text=_text(row.get("caption")), unsafe_text=_text(row.get("nsfw_caption")),
                safe_image=image_root / url.rstrip("/").rsplit("/", 1)[-1] if url else None, unsafe_image=None,
                category=str(row.get("chosen_category") or ""), row=i))
        else:  # visu-text
            coco_id = _text(row.get("coco_id"))
            records.append(Quadruplet(
                id=_first_id(row, ("incremental_id", "id", "_key"), i), safe_text=_text(row.get("safe")),
                unsafe_text=_text(row.get("nsfw")),
                safe_image=_coco_image(image_root, coco_id, f"{path} row {i}") if coco_id and image_root != path.parent else None,
                unsafe_image=None, category=str(row.get("tag") or ""), row=i))
    return records


def check_image(path: Path) -> str | None:
    """None when ``path`` is a readable image, else the reason."""
    if not path.is_file():
        return f"image file {path} does not exist"
    try:
        with Image.open(path) as im:
            im.load()  # a full decode: a file cut mid-stream passes Image.verify() but not this
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"image file {path} is corrupt or not an image ({err.__class__.__name__})"
    return None


def _row_problem(record: Quadruplet, modalities: tuple[str, ...], verify_images: bool) -> str | None:
    for name in modalities:
        value = getattr(record, name)
        if value is None:
            return f"{name} is empty"
        if name.endswith("image"):
            if verify_images:
                problem = check_image(value)
                if problem:
                    return problem
            elif not value.is_file():
                return f"image file {value} does not exist"
    return None


def decide_modalities(path: Path, records: list[Quadruplet]) -> tuple[str, ...]:
    """The modalities at least half of the rows have (rows without one of them are then bad rows)."""
    counts = {m: sum(getattr(r, m) is not None for r in records) for m in MODALITIES}
    modalities = tuple(m for m in MODALITIES if counts[m] * 2 >= len(records))
    if "safe_text" not in modalities:
        raise DataError(f"{path}: safe_text is empty in {len(records) - counts['safe_text']} of {len(records)} rows; "
                        "every quadruplet needs its safe caption")
    ignored = [f"{m} in {counts[m]} of {len(records)} rows" for m in MODALITIES if 0 < counts[m] and m not in modalities]
    if ignored:
        raise DataError(f"{path}: only some rows have {', '.join(ignored)}; give it in every row (or in none "
                        "for a text-only set), or split the file")
    return modalities


def cap_texts(records: list[Quadruplet], report: ReadReport) -> list[Quadruplet]:
    """Captions cut to MAX_TEXT_CHARS characters (CLIP reads 77 tokens); the count goes into the report."""
    cut = 0
    capped = []
    for record in records:
        long = {name: getattr(record, name)[:MAX_TEXT_CHARS] for name in ("safe_text", "unsafe_text")
                if getattr(record, name) is not None and len(getattr(record, name)) > MAX_TEXT_CHARS}
        cut += len(long)
        capped.append(replace(record, **long) if long else record)
    if cut:
        report.notes.append(f"{cut} captions longer than {MAX_TEXT_CHARS} characters cut to that length before "
                            "tokenising (CLIP reads at most 77 tokens)")
    return capped


def _unchecked_records(path: Path, fmt: str, image_root, unsafe_image_root, max_rows: int) -> list[Quadruplet]:
    """The file's rows as records (format detected, columns required), nothing checked yet."""
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist (data.train / data.val / --data)")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in {"visu", "visu-text", "table", "nsfwcaps"}:
        raise DataError(f"unknown dataset format '{fmt}': use auto, visu, visu-text, table or nsfwcaps")
    rows = read_rows(path)
    required = {"table": ("safe_text",), "visu": ("coco_id", "safe", "nsfw", "nsfw_im_path", "tag"),
                "nsfwcaps": ("image_coco_url", "caption", "nsfw_caption"),
                "visu-text": ("safe", "nsfw")}[fmt]
    _require_columns(path, rows, required, fmt)
    if max_rows:
        rows = rows[:max_rows]
    root = Path(image_root) if image_root else path.parent
    unsafe_root = Path(unsafe_image_root) if unsafe_image_root else root
    return _records_from_rows(path, rows, fmt, root, unsafe_root)


def read_unsafe_texts(path: str | os.PathLike, *, fmt: str = "auto", max_rows: int = 0) -> tuple[list[Quadruplet], ReadReport]:
    """The rows that hold an unsafe text, with id and category; no image is looked for (query texts).

    A row without an unsafe text (ViSU as downloaded holds one, id 109551) is skipped and named in the
    report; a file with none at all is an error.
    """
    path = Path(path)
    report = ReadReport(source=str(path), modalities=("unsafe_text",))
    records = cap_texts(_unchecked_records(path, fmt, None, None, max_rows), report)
    kept = [record for record in records if record.unsafe_text]
    report.skipped = [(record.row, f"id {record.id}: unsafe_text is empty") for record in records if not record.unsafe_text]
    if not kept:
        raise DataError(f"{path} has no unsafe texts (column unsafe_text, or nsfw / nsfw_caption) to query with")
    report.rows = len(kept)
    return kept, report


def read_quadruplets(
    path: str | os.PathLike,
    *,
    fmt: str = "auto",
    image_root: str | os.PathLike | None = None,
    unsafe_image_root: str | os.PathLike | None = None,
    skip_bad_rows: bool = False,
    max_rows: int = 0,
    verify_images: bool | None = None,
) -> tuple[list[Quadruplet], ReadReport]:
    """Read a quadruplet file; returns the records and a :class:`ReadReport`.

    A modality (safe/unsafe text/image) is used when at least half of the rows have it; every row must
    then have it (or ``skip_bad_rows`` skips and counts the rows that do not); one that fewer rows have
    is refused, naming the count. Image files are checked
    for existence; with ``skip_bad_rows`` they are also decoded-verified, so corrupt ones are
    skipped up front (otherwise a corrupt image fails when loaded, naming the file and row).
    """
    path = Path(path)
    records = _unchecked_records(path, fmt, image_root, unsafe_image_root, max_rows)
    report = ReadReport(source=str(path), modalities=decide_modalities(path, records))
    records = cap_texts(records, report)
    modalities = report.modalities
    verify = skip_bad_rows if verify_images is None else verify_images
    kept = []
    for record in records:
        problem = _row_problem(record, modalities, verify)
        if problem is None:
            kept.append(record)
        elif skip_bad_rows:
            report.skipped.append((record.row, f"id {record.id}: {problem}"))
        else:
            raise DataError(f"{path} row {record.row} (id {record.id}): {problem}. "
                            "Fix the row or pass --skip-bad-rows (data.skip_bad_rows=true) to skip and count bad rows.")
    if not kept:
        raise DataError(f"{path}: no usable rows left ({len(report.skipped)} skipped)")
    report.rows = len(kept)
    return kept, report
