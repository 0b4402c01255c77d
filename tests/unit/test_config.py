"""Typed configs: YAML + dotted overrides, validation messages, shipped configs, CLI help."""

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
    ("optim.lr=fast", "optim.lr must be a float"),
    ("run.resume=maybe", "run.resume must be true or false"),
    ("lora=3", "'lora' is a section"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override,message", [
    ("loss.temperature=0", "loss.temperature must be > 0"),
    ("data.batch_size=1", "data.batch_size must be at least 2"),
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
