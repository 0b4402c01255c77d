"""A run folder has one writer (a live holder is named, a dead one's lock is taken over) and a resume
refuses, by name and with both values, every setting that cannot change mid-run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safeclip.checkpoint import RunError
from safeclip.config import ConfigError, config_to_dict, load_config
from safeclip.run_folder import MUTABLE_ON_RESUME, RunLock, resume_changes

ROOT = Path(__file__).resolve().parents[2]
HOLD_LOCK = "import sys, time; from safeclip.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"


def hold_lock(run_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_recognised(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunError, match=f"in use by process {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # the holder died without releasing
    assert f"process {holder.pid} no longer exists" in lock.note
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def saved(*overrides):
    return config_to_dict(load_config(None, ["data.train=t.jsonl", *overrides]))


def test_resume_refuses_fixed_settings_naming_each_with_both_values():
    with pytest.raises(ConfigError) as err:
        resume_changes(saved("optim.lr=0.01", "lora.alpha=4"), saved("optim.lr=0.02", "lora.alpha=8"))
    assert "optim.lr: the run has 0.01, now 0.02" in str(err.value)
    assert "lora.alpha: the run has 4.0, now 8.0" in str(err.value)
    for fixed in ("data.batch_size=16", "run.seed=3", "data.train=other.jsonl", "lora.r=8"):
        with pytest.raises(ConfigError, match=fixed.split("=")[0]):
            resume_changes(saved(), saved(fixed))


def test_resume_allows_and_reports_settings_that_may_change():
    changes = resume_changes(saved(), saved("optim.epochs=80", "optim.patience=9", "run.log_every=3"))
    assert changes == {"optim.epochs": [50, 80], "optim.patience": [5, 9], "run.log_every": [10, 3]}
    assert {"optim.epochs", "optim.patience", "run.log_every"} <= MUTABLE_ON_RESUME


def test_resume_of_a_run_saved_before_a_setting_existed():
    """A run started before ``method`` and ``hysac.*`` existed resumes with their defaults, not with another value."""
    old = saved()
    del old["method"], old["hysac"]
    defaults = config_to_dict(load_config(None, []))
    assert resume_changes(old, saved(), defaults) == {}
    with pytest.raises(ConfigError, match="method: the run has None, now 'hysac'"):
        resume_changes(old, saved("method=hysac"), defaults)
