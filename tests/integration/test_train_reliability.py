"""What a run folder promises (README, "Reliability promises"), each shown on a tiny real run: no code runs
from a checkpoint, a resume refuses what it cannot honour and continues exactly (also mid-epoch), the same
seed gives the same adapters, one writer per folder, and a full disk or a diverging loss stops the run with
the last checkpoint intact."""

import errno
import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from safeclip.checkpoint import DiskFullError, RunError
from safeclip.config import ConfigError
from safeclip.train import train
from tests.fixtures import Payload, write_quadruplets
from tests.integration.test_train import run_module, tiny_config
from tests.unit.test_run_folder import hold_lock


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_quadruplets(tmp_path_factory.mktemp("data"), 16)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_clip_dir, data):
    """A finished one-epoch run (2 steps); tests copy it and resume the copy."""
    root = tmp_path_factory.mktemp("one_epoch")
    return train(tiny_config(root, tiny_clip_dir, data, **{"optim.epochs": 1, "data.val": ""}))


def copy_run(one_epoch_run, tmp_path):
    shutil.copytree(one_epoch_run, tmp_path / "run")
    return tmp_path / "run"


def log_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_a_planted_pickle_in_a_checkpoint_does_not_run(tmp_path, tiny_clip_dir, data, one_epoch_run):
    run_dir = copy_run(one_epoch_run, tmp_path)
    ckpt = run_dir / "checkpoints" / "epoch-0001"
    marker = tmp_path / "payload-ran"
    for name in ("optimizer.json", "optimizer.safetensors"):
        (ckpt / name).unlink()
    torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, ckpt / "optimizer.pt")
    with pytest.raises(RunError, match="optimizer.pt, a pickle that could run code when loaded, which is never read"):
        train(tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.epochs": 2, "data.val": "", "run.resume": "true"}))
    assert not marker.exists()


def test_resume_refuses_a_changed_lr_and_records_more_epochs(tmp_path, tiny_clip_dir, data, one_epoch_run):
    run_dir = copy_run(one_epoch_run, tmp_path)
    resumed = {"optim.epochs": 2, "data.val": "", "run.resume": "true"}
    with pytest.raises(ConfigError, match=r"lora.alpha: the run has 4.0, now 8.0; optim.lr: the run has 0.01, now 0.02"):
        train(tiny_config(tmp_path, tiny_clip_dir, data, **resumed, **{"optim.lr": 0.02, "lora.alpha": 8}))
    train(tiny_config(tmp_path, tiny_clip_dir, data, **resumed))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    changed = {k: v for k, v in history[-1]["changed"].items() if k != "run.out_dir"}  # the copy moved the folder
    assert changed == {"optim.epochs": [1, 2], "run.resume": [False, True]} and history[-1]["step"] == 2
    assert log_steps(run_dir) == [1, 2, 3, 4]


def test_the_same_seed_gives_the_same_adapters_with_and_without_a_reference_cache(tmp_path, tiny_clip_dir, data):
    """The first run computes the cache (iterating a DataLoader), the second reads it: same dropout draws."""
    adapters = []
    for name in ("computes", "reads"):
        cfg = tiny_config(tmp_path / name, tiny_clip_dir, data, **{
            "optim.epochs": 1, "data.val": "", "lora.dropout": 0.1, "data.reference_cache_dir": tmp_path / "cache"})
        adapters.append(load_file(train(cfg) / "checkpoints" / "epoch-0001" / "lora.safetensors"))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_a_kill_mid_epoch_resumes_exactly_from_a_step_checkpoint(tmp_path, tiny_clip_dir, data):
    """4 optimizer steps per epoch of 2 micro-batches each; checkpoints every 2 steps; killed at step 7.

    Every run is its own process, as a user's runs are (a process that already ran other work may round
    differently in the last bit)."""
    settings = [f"model.name={tiny_clip_dir}", f"data.train={data}", "data.val=", "data.batch_size=4",
                "optim.grad_accum=2", "lora.r=4", "lora.alpha=4", "lora.dropout=0.1", "optim.epochs=2",
                "optim.lr=1e-2", "run.progress=false", "run.log_every=1", "run.checkpoint_every_steps=2",
                "run.keep_checkpoints=2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_module("safeclip.cli", "train", *settings, f"run.out_dir={full}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_module("tests.train_until", "7", *settings, f"run.out_dir={cut}", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["epoch-0001", "latest", "step-00000006"]
    assert log_steps(cut)[-1] == 7  # written before the kill, cut on resume
    resumed = run_module("safeclip.cli", "train", *settings, f"run.out_dir={cut}", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 1, step 6, 4 batches into epoch 2" in resumed.stdout
    assert log_steps(cut) == log_steps(full) == list(range(1, 9))
    for name in ("lora", "optimizer"):
        a = load_file(full / "checkpoints" / "epoch-0002" / f"{name}.safetensors")
        b = load_file(cut / "checkpoints" / "epoch-0002" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_second_writer_is_refused_and_a_dead_writers_folder_starts_clean(tmp_path, tiny_clip_dir, data):
    cfg = tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.epochs": 1, "data.val": ""})
    holder = hold_lock(cfg.run.out_dir)
    try:
        with pytest.raises(RunError, match=f"in use by process {holder.pid}"):
            train(cfg)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a run killed at step 1, before its first checkpoint: its lock is stale and its log is not continued
    args = [f"model.name={tiny_clip_dir}", f"data.train={data}", "data.batch_size=8", "lora.r=4", "lora.alpha=4",
            "optim.epochs=1", f"run.out_dir={cfg.run.out_dir}", "run.progress=false", "run.log_every=1"]
    assert run_module("tests.train_until", "1", *args, cwd=tmp_path).returncode == -signal.SIGKILL
    assert log_steps(tmp_path / "run") == [1]
    train(cfg)
    assert log_steps(tmp_path / "run") == [1, 2] and not (tmp_path / "run" / ".lock").exists()


def test_a_full_disk_is_reported_and_the_last_checkpoint_survives(tmp_path, tiny_clip_dir, data, one_epoch_run,
                                                                  monkeypatch):
    run_dir = copy_run(one_epoch_run, tmp_path)
    real_write = os.write

    def write(fd, data):  # the disk fills up while the run writes its next checkpoint
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run_dir / "checkpoints")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(DiskFullError, match="no space left on the device holding .* is intact"):
        train(tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.epochs": 2, "data.val": "", "run.resume": "true"}))
    monkeypatch.undo()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "epoch-0001"
    assert json.loads((run_dir / "checkpoints" / "epoch-0001" / "state.json").read_text())["step"] == 2
    assert not [p for p in run_dir.rglob(".*") if p.name != ".lock"], "leftover temporary files"
    load_file(run_dir / "checkpoints" / "epoch-0001" / "lora.safetensors")


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_clip_dir, data):
    cfg = tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.lr": 1e30, "optim.epochs": 1, "data.val": "",
                                                       "run.checkpoint_every_steps": 1})
    with pytest.raises(RunError, match="the loss is nan at step 2 .* last good checkpoint \\(step-00000001\\) is intact"):
        train(cfg)
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000001"
    assert not (run_dir / "best").exists() and not (run_dir / "summary.json").exists()
    assert all(torch.isfinite(v).all() for v in load_file(run_dir / "checkpoints" / "step-00000001" / "lora.safetensors").values())
