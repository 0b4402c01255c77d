"""JSON and JSON-lines files: the project's one reader, strict for input data, tolerant of a torn last line for
records appended by runs that may have been killed.

    from safeclip.jsonl import read_jsonl, read_records
    rows = read_jsonl("train.jsonl")                      # a bad line raises DataError naming file and line
    records = read_records(sorted(out.glob("part-*.jsonl")))  # torn lines skipped

Used by the dataset readers (``data/quadruplets.py``), run logs (``checkpoint.py``, ``plots.py``), per-process
job parts (``jobs.py``) and the LLM judge's reply cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from safeclip.errors import DataError


def read_text(path: str | os.PathLike) -> str:
    """The file as UTF-8 text; a byte that is not UTF-8 is named with its line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line} (byte offset {err.start}): byte 0x{data[err.start]:02x} is not UTF-8 text; "
                        "save the file as UTF-8") from err


def unique_keys(where: str):
    """A ``json`` object hook that refuses a key given twice in one object (the parser would keep the last)."""
    def hook(pairs: list[tuple[str, object]]) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise DataError(f"{where}: key {key!r} appears twice in one JSON object; one of the rows would be lost. "
                                "Give every row its own key")
            seen[key] = value
        return seen
    return hook


def parse_json(text: str, where: str):
    """``json.loads`` that refuses duplicate keys, naming ``where``."""
    return json.loads(text, object_pairs_hook=unique_keys(where))


def read_jsonl(path: str | os.PathLike, *, skip_bad_lines: bool = False) -> list[dict]:
    """The JSON values of a JSON-lines file, in order; blank lines are skipped. A line that is not JSON (or not
    UTF-8) raises :class:`~safeclip.errors.DataError` naming the file and line, or is skipped with
    ``skip_bad_lines`` (records appended by a run that may have been interrupted mid-line)."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace") if skip_bad_lines else read_text(path)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(parse_json(line, f"{path} line {lineno}"))
        except json.JSONDecodeError as err:
            if not skip_bad_lines:
                raise DataError(f"{path} line {lineno} is not valid JSON ({err})") from err
    return rows


def read_records(paths: Iterable[Path]) -> list[dict]:
    """Every complete JSON line of ``paths`` in order; blank lines and torn (unparseable) lines are skipped."""
    return [row for path in paths for row in read_jsonl(path, skip_bad_lines=True)]


def cut_torn_line(path: Path) -> None:
    """Truncate ``path`` after its last newline: drops the half-written last record of a killed run."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
