"""HySAC through the project's training loop (method: hysac) on a tiny CLIP: it trains, resumes exactly, stores bounds."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from safeclip.config import load_config
from safeclip.hysac.model import load_hysac
from safeclip.hysac.authors import SCALARS
from safeclip.hysac.training import selection_score
from safeclip.models.clip import load_clip
from safeclip.train import load_lora_state, train
from tests.fixtures import write_quadruplets
from tests.integration.test_train import run_module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_quadruplets(tmp_path_factory.mktemp("data"), 16)


def hysac_config(out, clip_dir, data, epochs=2):
    return load_config(None, [
        "method=hysac", f"model.name={clip_dir}", f"data.train={data}", f"data.val={data}", "data.batch_size=8",
        "lora.r=4", "lora.alpha=4", "lora.dropout=0.0", f"optim.epochs={epochs}", "optim.lr=1e-2", "optim.patience=0",
        "data.cache_references=false", f"run.out_dir={out}", "run.progress=false", "run.log_every=1"])


def test_hysac_trains_adapters_and_scalars_and_stores_bounds(tmp_path, tiny_clip_dir, data):
    run = train(hysac_config(tmp_path / "run", tiny_clip_dir, data))
    state = load_file(run / "checkpoints" / "epoch-0002" / "lora.safetensors")
    scalars = {k: v for k, v in state.items() if k.startswith("objective.")}
    assert set(scalars) == {f"objective.{name}" for name in SCALARS}
    embed_dim = load_clip(tiny_clip_dir).embed_dim
    assert scalars["objective.textual_alpha"].item() != pytest.approx(-0.5 * torch.tensor(float(embed_dim)).log().item())
    assert scalars["objective.curv"].item() != 0.0  # c moved from 1
    assert all(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)  # every adapter trained
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert {"contrastive_safe", "entail_safe_image_unsafe_text", "total"} <= set(logged[0])
    meta = json.loads((run / "best" / "hysac.json").read_text())
    assert set(meta["bounds"]) == {"S", "U", "V", "G"} and meta["bounds_split"] == str(data)
    model = load_hysac(run)
    assert model.bounds == meta["bounds"] and model.curvature() == pytest.approx(meta["curvature"])
    val = [json.loads(line) for line in (run / "val_log.jsonl").read_text().splitlines()]
    assert 0 <= val[-1]["score"] <= 600 and "allowed" in val[-1]["metrics"]


def test_hysac_resume_mid_epoch_restores_curvature_and_scales(tmp_path, tiny_clip_dir, data):
    """Killed after step 3 (checkpoint at step 2, mid-epoch), resumed: the adapters, HySAC's curvature, scales
    and logit scale, and the optimizer state equal an uninterrupted run's bit for bit. Each run is its own process."""
    settings = ["method=hysac", f"model.name={tiny_clip_dir}", f"data.train={data}", "data.val=", "data.batch_size=4",
                "lora.r=4", "lora.alpha=4", "lora.dropout=0.1", "optim.epochs=2", "optim.lr=1e-2",
                "data.cache_references=false", "run.progress=false", "run.log_every=1", "run.checkpoint_every_steps=2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_module("safeclip.cli", "train", *settings, f"run.out_dir={full}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_module("tests.train_until", "3", *settings, f"run.out_dir={cut}", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    resumed = run_module("safeclip.cli", "train", *settings, f"run.out_dir={cut}", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 0, step 2, 2 batches into epoch 1" in resumed.stdout
    a = load_file(full / "checkpoints" / "epoch-0002" / "lora.safetensors")
    b = load_file(cut / "checkpoints" / "epoch-0002" / "lora.safetensors")
    assert {k for k in a if k.startswith("objective.")} == {f"objective.{n}" for n in SCALARS}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = load_file(full / "checkpoints" / "epoch-0002" / "optimizer.safetensors")
    b = load_file(cut / "checkpoints" / "epoch-0002" / "optimizer.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_hysac_checkpoint_is_refused_by_a_run_without_its_scalars(tmp_path, tiny_clip_dir, data):
    """The objective's parameters are part of the checkpoint: a HySAC checkpoint loaded into a run without the
    objective's module is refused with the reason."""
    run = train(hysac_config(tmp_path / "run", tiny_clip_dir, data, epochs=1))
    state = load_file(run / "checkpoints" / "epoch-0001" / "lora.safetensors")
    with pytest.raises(ValueError, match="another method"):
        load_lora_state(state, torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))


def test_selection_score_is_six_recalls():
    """Perfectly paired embeddings: each of the six R@1 is 100."""
    from safeclip import hyperbolic as H

    u = torch.eye(4, dtype=torch.float64)
    emb = {"safe_text": H.expmap0(u * 0.5, 1.0), "safe_image": H.expmap0(u * 0.6, 1.0),
           "unsafe_text": H.expmap0(u * 2.0, 1.0), "unsafe_image": H.expmap0(u * 2.2, 1.0)}
    assert selection_score(emb, 1.0) == pytest.approx(600.0)
    emb["unsafe_image"] = emb["unsafe_image"].flip(0)
    assert selection_score(emb, 1.0) == pytest.approx(400.0)
