"""Atomic run-folder writes: replace a folder (or a link to one) whole or leave it as it was, also across a kill;
states stored without pickles; a full disk named as such."""

import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from safeclip.checkpoint import (
    DiskFullError,
    RunError,
    load_state,
    reporting_full_disk,
    restore_rng,
    rng_state,
    save_state,
    write_folder_atomic,
    write_text_atomic,
)
from tests.fixtures import Payload

ROOT = Path(__file__).resolve().parents[2]


def fill_with(text):
    def fill(tmp):
        (tmp / "a.txt").write_text(text)
    return fill


def test_replaces_a_folder_and_leaves_no_siblings(tmp_path):
    target = tmp_path / "base"
    write_folder_atomic(target, fill_with("one"))
    write_folder_atomic(target, fill_with("two"))
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_linked_folder_is_replaced_by_the_new_one_and_the_linked_one_is_kept(tmp_path):
    elsewhere = write_folder_atomic(tmp_path / "shared" / "base", fill_with("shared"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "base").symlink_to(elsewhere, target_is_directory=True)
    target = write_folder_atomic(tmp_path / "run" / "base", fill_with("new"))
    assert not target.is_symlink() and (target / "a.txt").read_text() == "new"
    assert (elsewhere / "a.txt").read_text() == "shared"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["base"]


def test_a_failed_fill_keeps_the_old_folder(tmp_path):
    target = write_folder_atomic(tmp_path / "base", fill_with("old"))

    def broken(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_folder_atomic(target, broken)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


# ----------------------------------------------------------------------------- a kill between the swap's renames

KILL_AT_RENAME = """
import os, signal, sys
from pathlib import Path
from safeclip import checkpoint
kill_at, calls, real = int(sys.argv[2]), [0], os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
def fill(tmp):
    (tmp / "a.txt").write_text("new")
checkpoint.write_folder_atomic(Path(sys.argv[1]), fill)
"""


@pytest.mark.parametrize("kill_at, expected", [(1, "old"), (2, "old"), (3, "new")])
def test_a_kill_between_the_renames_is_recovered(tmp_path, kill_at, expected):
    """Killed before the n-th rename of a replacement: the next start finds the old or the new folder, whole."""
    from safeclip.checkpoint import recover_folder_swaps

    target = write_folder_atomic(tmp_path / "best", fill_with("old"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(target), str(kill_at)], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) != ["best"]  # the kill left the swap half done
    assert recover_folder_swaps(tmp_path)
    assert (target / "a.txt").read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


# ----------------------------------------------------------------------------- states without pickles


def test_optimizer_and_rng_states_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_state(optimizer.state_dict(), tmp_path, "optimizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    restored = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    restored.load_state_dict(load_state(tmp_path, "optimizer"))
    assert restored.param_groups[0]["lr"] == 1e-3 and restored.param_groups[0]["betas"] == (0.9, 0.999)
    for a, b in zip(optimizer.state.values(), restored.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    save_state(rng_state(), tmp_path, "rng-0")
    drawn = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng(load_state(tmp_path, "rng-0"))
    assert (random.random(), np.random.rand()) == drawn[:2] and torch.equal(torch.rand(1), drawn[2])


def test_a_pickled_state_is_refused_and_never_loaded(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, tmp_path / "optimizer.pt")
    with pytest.raises(RunError, match="optimizer.pt, a pickle that could run code"):
        load_state(tmp_path, "optimizer")
    assert not marker.exists()


def test_a_full_disk_is_reported_and_the_old_file_stays(tmp_path, monkeypatch):
    path = write_text_atomic(tmp_path / "state.json", "old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError, match="no space left on the device holding .* while writing state"):
        with reporting_full_disk("state", tmp_path):
            write_text_atomic(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
