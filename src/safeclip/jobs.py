"""Resumable per-process jobs: every process appends its finished records to its own part file.

A job is a list of work items with stable keys. Process ``r`` of ``P`` (``accelerate launch`` / ``torchrun``,
else one process) takes items ``r, r + P, ...``, skips those whose key is already recorded in any part file
(so a rerun, on any number of processes, resumes where the last one stopped) and appends one JSON line per
finished item to its own part file, flushed to disk after each batch. A line cut short by a kill is cut off
before the next append and skipped by readers; its item is redone. ``merge`` joins the parts in input order.

    job = PartsJob(out, "part-{rank}.jsonl", key=lambda record: record["id"])
    todo = job.todo(rows, key=lambda row: row["id"])        # this process's unfinished items
    with job.appender() as append:
        for start in range(0, len(todo), 16):
            append([make_record(row) for row in todo[start:start + 16]])
    job.wait_for_everyone()
    if job.is_main:
        job.merge([row["id"] for row in rows], out / "merged.jsonl")

Used by ``datagen generate`` / ``datagen images`` and ``eval t2i`` / ``eval i2t``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from safeclip.checkpoint import write_text_atomic
from safeclip.errors import DataError
from safeclip.jsonl import cut_torn_line, read_records

Item = TypeVar("Item")


def process_state():
    """accelerate's ``PartialState``; on CPU-only machines ``cpu=True`` so that ``torchrun`` / ``accelerate launch``
    processes form a gloo group instead of each running everything."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class PartsJob:
    """One job folder: part files named by ``pattern`` (with ``{rank}``), records identified by ``key``.

    ``rank``/``world_size`` default to :func:`process_state` (one process when not launched).
    """

    def __init__(self, folder: str | os.PathLike, pattern: str, key: Callable[[dict], Hashable], *,
                 rank: int | None = None, world_size: int | None = None) -> None:
        if "{rank}" not in pattern:
            raise ValueError(f"part file pattern {pattern!r} must contain {{rank}}")
        self.state = None
        if rank is None or world_size is None:
            self.state = process_state()
            rank, world_size = self.state.process_index, self.state.num_processes
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.folder, self.pattern, self.key = Path(folder), pattern, key
        self.rank, self.world_size = rank, world_size

    @property
    def path(self) -> Path:
        """This process's part file."""
        return self.folder / self.pattern.format(rank=self.rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part_files(self) -> list[Path]:
        return sorted(self.folder.glob(self.pattern.format(rank="*")))

    def records(self) -> list[dict]:
        """Every record written so far by any process (torn lines skipped)."""
        return read_records(self.part_files())

    def finished(self) -> set:
        return {self.key(r) for r in self.records()}

    def todo(self, items: Sequence[Item], key: Callable[[Item], Hashable]) -> list[Item]:
        """This process's share of ``items`` (every ``world_size``-th, from ``rank``) not yet recorded."""
        keys = [key(item) for item in items]
        if len(set(keys)) != len(keys):
            raise DataError("work item keys must be unique to resume safely (e.g. give an id column without repeats)")
        done = self.finished()
        return [item for item, k in list(zip(items, keys))[self.rank::self.world_size] if k not in done]

    @contextmanager
    def appender(self) -> Iterator[Callable[[Sequence[dict]], None]]:
        """``append(records)``: one JSON line each, flushed and synced to disk before it returns."""
        self.folder.mkdir(parents=True, exist_ok=True)
        cut_torn_line(self.path)
        with open(self.path, "a", encoding="utf-8") as handle:

            def append(records: Sequence[dict]) -> None:
                handle.write("".join(json.dumps(r) + "\n" for r in records))
                handle.flush()
                os.fsync(handle.fileno())

            yield append

    def wait_for_everyone(self) -> None:
        """Barrier across processes (nothing when rank/world size were given explicitly)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def ordered(self, keys: Sequence[Hashable], *, what: str = "items", rerun: str = "rerun to finish") -> list[dict]:
        """The records of ``keys`` in that order; a clear error names the ones not recorded yet."""
        found: dict = {}
        for record in self.records():
            found.setdefault(self.key(record), record)
        missing = [k for k in keys if k not in found]
        if missing:
            raise DataError(f"{len(missing)} {what} not finished yet (e.g. {missing[:3]}); {rerun}")
        return [found[k] for k in keys]

    def merge(self, keys: Sequence[Hashable], target: str | os.PathLike, **message) -> Path:
        """Write :meth:`ordered` as one JSONL file, atomically; returns its path."""
        return write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in self.ordered(keys, **message)))
