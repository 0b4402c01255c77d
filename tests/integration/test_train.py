"""Safe-CLIP training on a tiny CLIP and a tiny quadruplet set: it trains, T0/V0 stay frozen, resume is exact."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safeclip.config import load_config
from safeclip.data import QuadrupletCollator, QuadrupletDataset, read_quadruplets
from safeclip.models.clip import load_clip
from safeclip.models.lora import base_parameters, lora_parameters
from safeclip.train import prepare_encoders, reference_embeddings, safe_clip_step_losses, train
from tests.fixtures import write_quadruplets


def tiny_config(tmp_path, clip_dir, data, **extra):
    overrides = [
        f"model.name={clip_dir}", f"data.train={data}", f"data.val={data}", "data.batch_size=8",
        "lora.r=4", "lora.alpha=4", "lora.dropout=0.0", "optim.epochs=2", "optim.lr=1e-2",
        f"run.out_dir={tmp_path / 'run'}", "run.progress=false", "run.log_every=1",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_quadruplets(tmp_path_factory.mktemp("data"), 16)


def test_training_moves_lora_only_and_references_stay_bit_identical(tmp_path, tiny_clip_dir, data):
    cfg = tiny_config(tmp_path, tiny_clip_dir, data)
    bundle = load_clip(tiny_clip_dir)
    text, vision = prepare_encoders(bundle, cfg)
    records, report = read_quadruplets(data)
    batch = QuadrupletCollator(bundle.tokenizer)([QuadrupletDataset(records, bundle.image_processor, report.modalities)[i] for i in range(8)])
    refs_before = reference_embeddings(text, vision, batch, torch.float32)
    base_before = {n: p.detach().clone() for n, p in {**base_parameters(text), **{"v." + k: v for k, v in base_parameters(vision).items()}}.items()}
    lora_before = {n: p.detach().clone() for n, p in {**lora_parameters(text), **{"v." + k: v for k, v in lora_parameters(vision).items()}}.items()}
    params = [p for m in (text, vision) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        terms = safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32)
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
    refs_after = reference_embeddings(text, vision, batch, torch.float32)
    for key in refs_before:
        assert torch.equal(refs_before[key], refs_after[key]), f"{key} moved: T0/V0 must be frozen"
    base_after = {**base_parameters(text), **{"v." + k: v for k, v in base_parameters(vision).items()}}
    assert all(torch.equal(base_before[n], base_after[n]) for n in base_before), "a base weight changed"
    lora_after = {**lora_parameters(text), **{"v." + k: v for k, v in lora_parameters(vision).items()}}
    changed = [n for n in lora_before if not torch.equal(lora_before[n], lora_after[n])]
    assert len(changed) == len(lora_before), f"untrained LoRA params: {set(lora_before) - set(changed)}"
    assert {"redirection_contrastive", "redirection_cosine", "preservation_cosine", "preservation_contrastive"} <= set(terms)
    # with adapters active, T(t*) is no longer T0(t*): the model being trained differs from its reference
    current = text(input_ids=batch["safe_input_ids"], attention_mask=batch["safe_attention_mask"]).text_embeds
    assert not torch.allclose(current, refs_after["safe_text_ref"])


def test_train_writes_run_folder_and_logs(tmp_path, tiny_clip_dir, data):
    run_dir = train(tiny_config(tmp_path, tiny_clip_dir, data))
    for name in ("config.yaml", "meta.json", "train_log.jsonl", "val_log.jsonl", "summary.json", "best/metrics.json",
                 "best/text_adapter/adapter_model.safetensors", "best/vision_adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and "redirection_cosine" in rows[-1] and "total" in rows[-1]
    val = [json.loads(line) for line in (run_dir / "val_log.jsonl").read_text().splitlines()]
    assert len(val) == 2 and "T*->V+V*" in val[0]["metrics"]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and meta["mode"].startswith("full")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "epoch-0002"


def test_text_only_data_trains_in_text_only_mode(tmp_path, tiny_clip_dir):
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"safe": f"a red circle {i}", "nsfw": f"a red circle {i} with blood", "tag": "blood"}) + "\n" for i in range(8)))
    run_dir = train(tiny_config(tmp_path, tiny_clip_dir, path, **{"data.val": "", "optim.epochs": 1}))
    assert "text-only" in json.loads((run_dir / "meta.json").read_text())["mode"]
    assert "redirection_contrastive" not in json.loads((run_dir / "train_log.jsonl").read_text().splitlines()[-1])


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, tiny_clip_dir, data):
    cfg = tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.epochs": 1})
    train(cfg)
    with pytest.raises(FileExistsError, match="run.resume=true"):
        train(tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.epochs": 1}))


ROOT = Path(__file__).resolve().parents[2]


def run_module(module, *args, cwd):
    """``python -m module args`` with this checkout's code (src/ and tests/) first on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_cli(*args, cwd):
    return run_module("safeclip.cli", *args, cwd=cwd)


def test_cli_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_clip_dir, data):
    common = [f"model.name={tiny_clip_dir}", f"data.train={data}", f"data.val={data}", "data.batch_size=4",
              "lora.r=4", "lora.alpha=4", "lora.dropout=0.1", "optim.epochs=3", "optim.lr=1e-2", "run.progress=false"]
    full = run_cli("train", *common, f"run.out_dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    # interrupted in epoch 2 (4 steps per epoch): the epoch-1 checkpoint survives, the rest is redone
    cut = run_module("tests.train_until", "6", *common, f"run.out_dir={tmp_path / 'cut'}", cwd=tmp_path)
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-3000:]
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "epoch-0001"
    resumed = run_cli("train", *common, f"run.out_dir={tmp_path / 'cut'}", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 1" in resumed.stdout
    a = load_file(tmp_path / "full" / "checkpoints" / "epoch-0003" / "lora.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "epoch-0003" / "lora.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    full_state = json.loads((tmp_path / "full" / "summary.json").read_text())
    cut_state = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert full_state["best_score"] == pytest.approx(cut_state["best_score"]) and full_state["step"] == cut_state["step"] == 12


def test_cli_reports_bad_config_without_traceback(tmp_path, data):
    result = run_cli("train", f"data.train={data}", "lora.r=0", cwd=tmp_path)
    assert result.returncode == 2 and "lora.r must be > 0, got 0" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("train", f"data.train={data}", "optim.nope=1", cwd=tmp_path)
    assert result.returncode == 2 and "unknown config key 'optim.nope'" in result.stderr
    result = run_cli("train", f"data.train={data}", "model.name=not-a-model", cwd=tmp_path)
    assert result.returncode == 2 and "unknown model 'not-a-model'" in result.stderr


def test_gradient_checkpointing_computes_the_same_step(tmp_path, tiny_clip_dir, data):
    records, report = read_quadruplets(data)
    grads = []
    for checkpointing in ("false", "true"):
        cfg = tiny_config(tmp_path, tiny_clip_dir, data, **{"run.gradient_checkpointing": checkpointing})
        bundle = load_clip(tiny_clip_dir)
        torch.manual_seed(0)
        text, vision = prepare_encoders(bundle, cfg)
        text.train()
        vision.train()
        batch = QuadrupletCollator(bundle.tokenizer)([QuadrupletDataset(records, bundle.image_processor, report.modalities)[i] for i in range(8)])
        terms = safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32)
        terms["total"].backward()
        grads.append((terms["total"].item(), [p.grad.clone() for p in text.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_recipe_steps_run_alone(tmp_path, tiny_clip_dir, data):
    """setup -> train_one_epoch -> keep_best -> finish, called one by one as train() calls them."""
    from safeclip.train import finish, keep_best, setup, train_one_epoch

    run = setup(tiny_config(tmp_path, tiny_clip_dir, data, **{"data.val": ""}))
    seen = []
    before = {k: v.clone() for k, v in lora_parameters(run.text_base).items()}
    train_one_epoch(run, 0, on_step=lambda r, logged: seen.append((r.state.step, logged["total"])))
    assert [step for step, _ in seen] == [1, 2] and run.state.epoch == 1  # 16 rows, batches of 8
    assert all(not torch.equal(before[k], v) for k, v in lora_parameters(run.text_base).items())
    assert keep_best(run, 0.0, {}) and (run.run_dir / "best" / "metrics.json").is_file()
    assert not (run.run_dir / "checkpoints").exists()  # checkpointing is its own step
    assert finish(run) == run.run_dir and json.loads((run.run_dir / "summary.json").read_text())["step"] == 2


def test_authors_selection_keeps_best_recall_and_best_loss_adapters(tmp_path, tiny_clip_dir, data):
    """optim.selection=loss_or_recall (the authors' early stopping): val loss logged, best_loss/ kept beside best/."""
    run_dir = train(tiny_config(tmp_path, tiny_clip_dir, data, **{"optim.selection": "loss_or_recall"}))
    val = [json.loads(line) for line in (run_dir / "val_log.jsonl").read_text().splitlines()]
    assert all(isinstance(row["val_loss"], float) for row in val) and val[0]["loss_improved"]
    best_loss = json.loads((run_dir / "best_loss" / "metrics.json").read_text())
    assert best_loss["val_loss"] == min(row["val_loss"] for row in val)
    assert (run_dir / "best_loss" / "text_adapter" / "adapter_model.safetensors").is_file()
