"""Data-parallel training on 2 CPU processes (gloo) equals 1 process at the same global batch.

    pytest tests/integration/test_multiprocess.py        # ~45 s on 2 cores

``torchrun --nproc_per_node 2 -m safeclip.cli train ...`` runs the real CLI; with
``loss.gather_across_processes=true`` the losses and the updated LoRA weights match a 1-process run;
without gathering the contrastive terms see half batches (another objective); a 2-process
checkpoint resumes on 1 process and lands where the 1-process run does.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures import write_quadruplets

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "safeclip.cli", "train", *overrides]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        port = str(free_port())  # a fixed port clashes with another run of this test on the same machine
        command = [torchrun, "--nproc_per_node", str(processes), "--master_port", port, "-m", "safeclip.cli", "train", *overrides]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def lora(run: Path, epoch: int) -> dict:
    return load_file(run / "checkpoints" / f"epoch-{epoch:04d}" / "lora.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_match_one_and_resume_on_one(tmp_path, tiny_clip_dir):
    data = write_quadruplets(tmp_path / "d", 16)
    common = [f"model.name={tiny_clip_dir}", f"data.train={data}", f"data.val={data}", "data.batch_size=8", "lora.r=4",
              "lora.dropout=0", "optim.lr=1e-2", "run.progress=false", "run.log_every=1", "run.eval_batch_size=4"]
    launch(1, *common, "optim.epochs=2", f"run.out_dir={tmp_path / 'one'}", cwd=tmp_path)
    two_run = launch(2, *common, "optim.epochs=1", f"run.out_dir={tmp_path / 'two'}", cwd=tmp_path)
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["processes"] == 2
    # each process built half of the reference cache and validated half of the split (4 batches of 4)
    for what in ("reference cache", "validation"):
        assert f"{what}: rank 0 of 2 embedded rows 0-8 of 16" in two_run.stdout, two_run.stdout[-2000:]
        assert f"{what}: rank 1 of 2 embedded rows 8-16 of 16" in two_run.stdout
    one_log = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    two_log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    for a, b in zip(one_log[:2], two_log):  # the same objective over the same global batches
        assert a["step"] == b["step"] and a["total"] == pytest.approx(b["total"], rel=1e-5)
    # same updated LoRA weights; the first checkpoint of the 1-process run was replaced, so compare by rerunning 1 epoch
    launch(1, *common, "optim.epochs=1", f"run.out_dir={tmp_path / 'one_e1'}", cwd=tmp_path)
    assert max_diff(lora(tmp_path / "one_e1", 1), lora(tmp_path / "two", 1)) < 2e-4  # float reduction order differs
    # the same references (the sharded cache is the one-process cache) and the same validation metrics
    (cache_two,), (cache_one,) = ((tmp_path / r / "reference_cache").glob("*.safetensors") for r in ("two", "one_e1"))
    assert cache_two.name == cache_one.name
    assert all(torch.equal(v, load_file(cache_one)[k]) for k, v in load_file(cache_two).items())
    val_one, val_two = (json.loads((tmp_path / r / "val_log.jsonl").read_text().splitlines()[0]) for r in ("one_e1", "two"))
    assert val_one["metrics"] == val_two["metrics"]
    # without gathering, each process's contrastive terms see only its half of the batch: a different objective
    launch(2, *common, "optim.epochs=1", "loss.gather_across_processes=false", f"run.out_dir={tmp_path / 'local'}", cwd=tmp_path)
    assert max_diff(lora(tmp_path / "one_e1", 1), lora(tmp_path / "local", 1)) > 5e-3
    local_log = json.loads((tmp_path / "local" / "train_log.jsonl").read_text().splitlines()[0])
    # logged terms are the mean over processes: the cosine means agree with one process, InfoNCE does not
    assert local_log["preservation_cosine"] == pytest.approx(one_log[0]["preservation_cosine"], rel=1e-5)
    assert local_log["preservation_contrastive"] != pytest.approx(one_log[0]["preservation_contrastive"], rel=1e-3)
    # the 2-process checkpoint resumes on 1 process and lands where the 1-process run did
    launch(1, *common, "optim.epochs=2", "run.resume=true", f"run.out_dir={tmp_path / 'two'}", cwd=tmp_path)
    assert max_diff(lora(tmp_path / "one", 2), lora(tmp_path / "two", 2)) < 2e-4
