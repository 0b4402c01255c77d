"""Atomic run-folder writes: files and whole folders appear complete or not at all.

A checkpoint is a folder written under a temporary name and renamed into place; the pointer
file ``checkpoints/latest`` is replaced atomically afterwards, so an interrupted write leaves the
previous checkpoint intact and ``--resume`` never sees a half-written one. Replacing an existing
folder takes two renames; :func:`recover_folder_swaps` finishes or rolls back one that a kill cut
short. Optimizer and RNG states are stored as safetensors + JSON: loading a checkpoint never
unpickles anything, so a run folder received from someone else cannot run code.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from safeclip.errors import UserError
from safeclip.jsonl import cut_torn_line, read_records


class RunError(UserError):
    """A run that cannot go on as asked (folder in use, disk full, training diverged); the message says why."""


class DiskFullError(RunError):
    """The device ran out of space while writing run files."""


@contextmanager
def reporting_full_disk(what: str, where: str | os.PathLike, *, intact: str = ""):
    """Turn ``OSError(ENOSPC)`` while writing ``what`` into a :class:`DiskFullError` that says so."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(f"no space left on the device holding {where} while writing {what}; "
                            + (f"{intact}; " if intact else "") + "free some space and run again") from err


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, fsync, rename over ``path``; a failure leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_path(path: Path) -> None:
    """Remove a folder, or a link to one without touching what it points to; nothing if absent."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def swap_names(target: Path) -> tuple[Path, Path]:
    """The complete new folder waiting to replace ``target``, and the old one being replaced."""
    return target.with_name(f".{target.name}.new"), target.with_name(f".{target.name}.old")


def write_folder_atomic(target: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp_dir)`` then move it to ``target``, replacing an existing folder recoverably.

    Order: fill ``.T.<random>.tmp``; rename it to ``.T.new`` (complete); rename ``T`` to ``.T.old``;
    rename ``.T.new`` to ``T``; remove ``.T.old``. A kill at any point leaves a state that
    :func:`recover_folder_swap` turns into the old or the new folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder_swap(target)
    new, old = swap_names(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        os.replace(tmp, new)
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(new, target)
        remove_path(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def recover_folder_swap(target: str | os.PathLike) -> str:
    """Finish or roll back a :func:`write_folder_atomic` that was killed; returns what was done ('' if nothing).

    ``.T.new`` is complete by construction, so a swap cut after ``T`` moved aside is finished with it;
    one cut before is rolled back (the old ``T`` stays). Leftover ``.T.*.tmp`` folders are removed.
    """
    target = Path(target)
    new, old = swap_names(target)
    done = ""
    if not (target.exists() or target.is_symlink()) and new.is_dir():
        os.replace(new, target)
        done = f"finished an interrupted replacement of {target}"
    elif not (target.exists() or target.is_symlink()) and old.exists():
        os.replace(old, target)
        done = f"restored {target} from an interrupted replacement"
    elif new.exists():
        remove_path(new)
        done = f"rolled back an interrupted replacement of {target}"
    if old.exists() or old.is_symlink():
        remove_path(old)
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        remove_path(leftover)
        done = done or f"removed an unfinished write of {target}"
    return done


def recover_folder_swaps(parent: str | os.PathLike) -> list[str]:
    """:func:`recover_folder_swap` for every folder of ``parent`` that has swap leftovers beside it."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    names = {p.name[1:].rsplit(".", 1)[0] for p in parent.glob(".*.new")} | {
        p.name[1:].rsplit(".", 1)[0] for p in parent.glob(".*.old")}
    names |= {p.name[1:].split(".", 1)[0] for p in parent.glob(".*.tmp") if p.is_dir()}
    return [done for name in sorted(names) if (done := recover_folder_swap(parent / name))]


# ----------------------------------------------------------------------------- states that load without unpickling


def flatten_state(state, prefix: str, tensors: dict[str, torch.Tensor]):
    """Replace every tensor in a nested dict/list structure by ``{"__tensor__": key}`` (stored in ``tensors``)."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, np.ndarray):
        tensors[prefix] = torch.from_numpy(state.copy())
        return {"__ndarray__": prefix}
    if isinstance(state, dict):
        if not all(isinstance(k, (str, int)) for k in state):
            raise TypeError(f"state keys under {prefix or 'the root'} must be str or int")
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        items = [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
        return {"__tuple__": items} if isinstance(state, tuple) else items
    if isinstance(state, bytes):
        return {"__bytes__": base64.b64encode(state).decode()}
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"cannot store a {type(state).__name__} at {prefix} without pickling")


def unflatten_state(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [unflatten_state(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy()
    if "__dict__" in node:
        return {k: unflatten_state(v, tensors) for k, v in node["__dict__"]}
    if "__tuple__" in node:
        return tuple(unflatten_state(v, tensors) for v in node["__tuple__"])
    if "__bytes__" in node:
        return base64.b64decode(node["__bytes__"])
    raise ValueError(f"unknown state node {sorted(node)}")


def save_state(state, folder: str | os.PathLike, name: str) -> None:
    """``name.safetensors`` (every tensor/array) + ``name.json`` (the structure and plain values)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten_state(state, "", tensors)
    write_bytes_atomic(Path(folder) / f"{name}.safetensors", safetensors_bytes(tensors))
    write_text_atomic(Path(folder) / f"{name}.json", json.dumps(structure) + "\n")


def load_state(folder: str | os.PathLike, name: str):
    """Inverse of :func:`save_state`; refuses a pickled ``name.pt`` (it could run code when loaded)."""
    folder = Path(folder)
    if not (folder / f"{name}.json").is_file():
        pickled = sorted(p.name for p in folder.glob(f"{name}*.pt"))
        hint = (f" It holds {', '.join(pickled)}, a pickle that could run code when loaded, which is never read; "
                "a checkpoint written by an older safeclip cannot be resumed safely, start a new run."
                if pickled else "")
        raise RunError(f"checkpoint {folder} has no {name}.json / {name}.safetensors.{hint}")
    tensors = load_file(folder / f"{name}.safetensors") if (folder / f"{name}.safetensors").is_file() else {}
    return unflatten_state(json.loads((folder / f"{name}.json").read_text(encoding="utf-8")), tensors)


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng():
    """Run a block without moving the global Python, NumPy and torch generators (they are put back after)."""
    state = rng_state()
    try:
        yield
    finally:
        restore_rng(state)


# ----------------------------------------------------------------------------- append-only record files


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line, first cutting a line torn by an interrupted write."""
    cut_torn_line(Path(path))
    with reporting_full_disk(f"a line of {Path(path).name}", path), Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def cut_jsonl(path: Path, keep: Callable[[dict], bool]) -> int:
    """Rewrite ``path`` (atomically) with only the rows ``keep`` accepts; torn lines go. Returns rows dropped."""
    if not path.is_file():
        return 0
    rows = read_records([path])
    kept = [row for row in rows if keep(row)]
    lines = path.read_text(encoding="utf-8").splitlines()
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
    return sum(1 for line in lines if line.strip()) - len(kept)
