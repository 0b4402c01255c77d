"""A training run's folder: one writer at a time, resume only with settings the run can honour, a history.

    with RunLock(run_dir):                          # a second writer is refused, naming the holder
        changes = resume_changes(saved, new)        # refuses settings that cannot change mid-run
        record_start(run_dir, step, changes)        # history.jsonl: every start and what changed

The lock is a file ``.lock`` holding the owner's pid and host, created with ``O_EXCL``; a lock whose
process no longer exists on this host is stale and taken over (and said so).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from safeclip.checkpoint import RunError, append_jsonl
from safeclip.config import ConfigError

# Settings a resumed run may change: they do not alter what the finished steps computed or what the
# next steps compute. Every other setting is fixed when the run starts.
MUTABLE_ON_RESUME = frozenset({
    "optim.epochs", "optim.patience", "optim.max_steps",
    "run.resume", "run.out_dir", "run.log_every", "run.log_with", "run.progress", "run.eval_batch_size",
    "run.checkpoint_every_steps", "run.keep_checkpoints", "run.compile",
    "data.num_workers", "data.image_cache_gb", "data.reference_cache_dir", "data.skip_bad_rows",
})


def flat_settings(config: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(saved: dict, new: dict, defaults: dict | None = None) -> dict[str, list]:
    """Settings that differ between the run's saved config and the new one: ``{key: [old, new]}``.

    Raises ConfigError naming every changed setting that a resumed run cannot honour. ``defaults``: a
    setting the saved config lacks (added to the software after the run started) counts as unchanged
    when the new value is its default.
    """
    old_flat, new_flat, default_flat = flat_settings(saved), flat_settings(new), flat_settings(defaults or {})
    changes = {key: [old_flat.get(key), new_flat.get(key)] for key in sorted(set(old_flat) | set(new_flat))
               if old_flat.get(key) != new_flat.get(key)
               and not (key not in old_flat and key in default_flat and new_flat.get(key) == default_flat[key])}
    fixed = {key: values for key, values in changes.items() if key not in MUTABLE_ON_RESUME}
    if fixed:
        listed = "; ".join(f"{key}: the run has {old!r}, now {new!r}" for key, (old, new) in fixed.items())
        raise ConfigError(f"cannot resume with settings that cannot change mid-run ({listed}). Put them back "
                          "to resume, or start a new run in another run.out_dir. Settings that may change: "
                          + ", ".join(sorted(MUTABLE_ON_RESUME - {'run.resume', 'run.out_dir'})))
    return changes


def record_start(run_dir: Path, *, step: int, resumed: bool, changes: dict | None = None) -> None:
    """One line in ``history.jsonl`` per start of the run: when, from which step, and what changed."""
    append_jsonl(run_dir / "history.jsonl", {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": "resume" if resumed else "start", "step": step,
        "pid": os.getpid(), "command": sys.argv, "changed": changes or {},
    })


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive use of a run folder for the lifetime of a run (a context manager)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / ".lock"
        self.note = ""

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(me) + "\n")
            return self
        raise RunError(f"could not lock {self.path.parent}")

    def take_over_if_stale(self) -> None:
        holder = self.holder()
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
            self.note = f"took over a stale lock of {self.path.parent} (process {pid} no longer exists)"
            self.path.unlink(missing_ok=True)
            return
        if not holder and time.time() - self.path.stat().st_mtime > 60:  # an empty lock file from a crash at creation
            self.path.unlink(missing_ok=True)
            return
        who = f"process {pid} on {host}" + (f" since {holder['since']}" if holder.get("since") else "") if holder else "another process"
        raise RunError(f"{self.path.parent} is in use by {who}: one run writes to a run folder at a time. Wait for it "
                       f"to finish, choose another run.out_dir, or remove {self.path} if that process is gone.")

    def release(self) -> None:
        if self.holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
