"""Typed configs: YAML + dotted overrides, validation messages, shipped configs, CLI help."""

import re

import pytest

from safeclip.cli import build_parser
from safeclip.config import ConfigError, describe_config, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\nlora:\n  r: 8\n")
    cfg = load_config(path, ["optim.lr=1e-4", "lora.target_modules=q_proj,v_proj", "run.resume=true"])
    assert cfg.optim.lr == 1e-4 and cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.run.resume


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.lr=fast", "optim.lr must be a number, got .fast."),
    ("run.resume=maybe", "run.resume must be true or false"),
    ("lora=3", "'lora' is a section"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override,message", [
    ("loss.temperature=0", "loss.temperature must be > 0"),
    ("data.batch_size=1", "data.batch_size must be >= 2, got 1"),
    ("optim.grad_accum=3", "multiple of optim.grad_accum"),
    ("data.text_padding=77", "data.text_padding must be"),
])
def test_out_of_range_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.train=x.jsonl", override]).validate()


def test_missing_train_file_is_named():
    with pytest.raises(ConfigError, match="data.train is empty"):
        load_config(None, []).validate()


@pytest.mark.parametrize("name", ["vit-l-14", "vit-l-14-336", "vit-h-14"])
def test_shipped_configs_load_and_start_with_their_command(name):
    path = f"configs/{name}_safe-clip.yaml"
    assert open(path).readline().startswith(f"# safeclip train --config {path}")
    cfg = load_config(path, ["data.train=x.jsonl"]).validate()
    assert cfg.lora.r == 16 and cfg.optim.lr == 1e-3 and cfg.data.batch_size == 128


def test_every_field_has_help():
    for line in describe_config().splitlines():
        assert line.split("): ", 1)[1].strip(), line


def test_cli_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "loss.redirection_contrastive" in capsys.readouterr().out


@pytest.mark.parametrize("override,message", [
    ("run.log_every=0", "run.log_every must be >= 1"),
    ("optim.max_steps=-5", "optim.max_steps must be >= 0"),
    ("data.batch_size=8.9", "data.batch_size must be a whole number, got 8.9"),
    ("optim.lr=inf", "optim.lr must be a finite number, got inf"),
    ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
    ("loss.redirection_cosine=-.inf", "loss.redirection_cosine must be a finite number"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints must be >= 1"),
])
def test_settings_that_would_fail_or_mislead_later_are_refused_before_any_work(tmp_path, override, message):
    from safeclip.train import train

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train(load_config(None, ["data.train=t.jsonl", f"run.out_dir={out}", override]))
    assert not out.exists()


# ----------------------------------------------------------------------------- issue 16 item 7

def test_lora_alpha_default_is_the_authors_and_the_shipped_configs():
    """Training without a YAML used alpha 16 (16x the update of the authors' and the shipped configs' alpha 1)."""
    import yaml

    from safeclip.methods.safe_clip import recipe_path

    assert load_config(None).lora.alpha == 1.0
    for name in ("vit-l-14", "vit-l-14-336", "vit-h-14"):
        assert load_config(f"configs/{name}_safe-clip.yaml").lora.alpha == 1.0
    # the offline demo keeps its own measured recipe: it sets alpha itself, so its numbers do not move
    assert yaml.safe_load(recipe_path().read_text())["lora"]["alpha"] == 16.0


@pytest.mark.parametrize("name", ["vit-l-14", "vit-l-14-336", "vit-h-14", "vit-l-14-authors"])
def test_shipped_configs_keep_every_in_batch_negative(name):
    """Gradient accumulation splits the batch, so Eq. 4 / Eq. 7 would see batch_size / grad_accum negatives."""
    cfg = load_config(f"configs/{name.replace('-authors', '')}_safe-clip{'-authors' if 'authors' in name else ''}.yaml")
    assert cfg.optim.grad_accum == 1
    if name == "vit-h-14":
        assert cfg.run.gradient_checkpointing and cfg.data.batch_size == 128


def test_authors_selection_resets_patience_when_loss_or_recall_improves():
    from safeclip.train import TrainState, select_epoch

    recall = [10.0, 12.0, 11.0, 11.5, 11.0, 11.0]
    loss = [5.0, 4.0, 3.5, 3.0, 3.2, 3.3]
    for selection, stops_after in (("recall_sum", 4), ("loss_or_recall", 6)):
        cfg = load_config(None, [f"optim.selection={selection}", "optim.patience=2"])
        state = TrainState()
        for epoch, (r, v) in enumerate(zip(recall, loss), 1):
            state.epoch = epoch
            select_epoch(state, r, v if selection == "loss_or_recall" else None, cfg)
            if state.stopped_early:
                break
        assert epoch == stops_after and state.best_epoch == 2
    assert state.best_loss == 3.0 and state.best_loss_epoch == 4


def test_unknown_selection_is_rejected():
    with pytest.raises(ConfigError, match="optim.selection must be"):
        load_config(None, ["data.train=x.jsonl", "optim.selection=loss"]).validate()
    with pytest.raises(ConfigError, match="loss_or_recall is Safe-CLIP's early stopping"):
        load_config(None, ["data.train=x.jsonl", "method=hysac", "optim.selection=loss_or_recall"]).validate()


@pytest.mark.parametrize("override,message", [
    ("run.resume=ture", "run.resume must be true or false, got 'ture'"),
    ("lora.train_text=flase", "lora.train_text must be true or false, got 'flase'"),
    ("lora.dropout=1.0", "lora.dropout must be < 1.0, got 1.0"),
    ("optim.epochs=0", "optim.epochs must be >= 1, got 0"),
    ("optim.epochs=2.5", "optim.epochs must be a whole number, got 2.5"),
    ("run.mixed_precision=fp8", "run.mixed_precision must be 'no', 'bf16' or 'fp16', got 'fp8'"),
    ("model.dtype=float64", "model.dtype must be 'float32', 'bfloat16' or 'float16'"),
])
def test_bool_typos_and_out_of_range_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_the_same_rules_hold_in_yaml_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  resume: sometimes\n")
    with pytest.raises(ConfigError, match="run.resume must be true or false, got 'sometimes'"):
        load_config(path)
    path.write_text("optim:\n  lr: -1.0\n")
    with pytest.raises(ConfigError, match=re.escape("optim.lr must be > 0.0, got -1.0")):
        load_config(path)


def test_strict_booleans_and_text_stays_text():
    cfg = load_config(None, ["run.resume=yes", "lora.train_vision=off", "data.train=on", "data.val=null",
                             "model.name=no"])
    assert cfg.run.resume is True and cfg.lora.train_vision is False
    assert (cfg.data.train, cfg.data.val, cfg.model.name) == ("on", "null", "no")  # a path is never a YAML word


def test_settings_objects_check_their_fields_when_built():
    from safeclip.config import OptimConfig

    with pytest.raises(ConfigError, match=re.escape("lr must be > 0.0, got 0.0")):
        OptimConfig(lr=0.0)
    with pytest.raises(ConfigError, match="resume must be of type bool"):
        load_config(None, []).run.__class__(resume="false")


@pytest.mark.parametrize("method,override,message", [
    ("uwm", "edit_text=ture", "uwm:edit_text must be true or false, got 'ture'"),
    ("uwm", "sparsity=1.5", "uwm:sparsity must be < 1.0, got 1.5"),
    ("safer-clip", "curriculum=nope", "safer-clip:curriculum must be true or false, got 'nope'"),
    ("safer-clip", "image_target=far", "safer-clip:image_target must be 'nearest' or 'paired', got 'far'"),
    ("safer-clip", "lora_rank=4", "unknown config key 'safer-clip:lora_rank'"),
])
def test_method_settings_use_the_same_parser(method, override, message):
    from safeclip.config import load_settings
    from safeclip.methods.safer_clip import SaferClipConfig
    from safeclip.methods.uwm import UwmConfig

    cls = {"uwm": UwmConfig, "safer-clip": SaferClipConfig}[method]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(cls, overrides=[override], prefix=f"{method}:")


@pytest.mark.parametrize("argv,message", [
    (["world", "pretrain", "--world", "w", "--out", "b", "--epochs", "0"], "epochs must be >= 1, got 0"),
    (["world", "pretrain", "--world", "w", "--out", "b", "--text-padding", "left"], "text_padding must be 'longest' or 'max_length'"),
    (["world", "build", "--out", "w", "--n-train", "0"], "n_train must be >= 1, got 0"),
    (["datagen", "sft", "--model", "m", "--pairs", "p.jsonl", "--out", "o", "--bf16", "ture"],
     "bf16 must be true or false, got 'ture'"),
    (["datagen", "dpo", "--model", "m", "--pairs", "p.jsonl", "--out", "o", "--lora-dropout", "1"],
     "lora_dropout must be < 1.0, got 1.0"),
])
def test_cli_flags_are_checked_the_same_way(argv, message, capsys, tmp_path, monkeypatch):
    from safeclip.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "world.json").write_text("{}")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
