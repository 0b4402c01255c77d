"""`safeclip <command> --help` lists every setting of every command with its default: each option's help line
names its default, and every field of the settings dataclass a command reads appears with its default."""

import argparse
import dataclasses
import re

import pytest

from safeclip.cli import build_parser
from safeclip.config import TrainConfig
from safeclip.datagen.dpo import DPOSettings
from safeclip.datagen.generate import CaptionSource, GenerationSettings, SamplingSettings
from safeclip.datagen.sft import SFTSettings
from safeclip.judges import LLMJudgeSettings
from safeclip.methods.safer_clip import SaferClipConfig
from safeclip.methods.uwm import UwmConfig
from safeclip.world.build import WorldSize
from safeclip.world.pretrain import PretrainSettings


def leaf_parsers(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, path + (name,))


LEAVES = dict(leaf_parsers(build_parser()))


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return flat(parser._get_formatter()._expand_help(action)) if action.help else ""


def test_every_command_is_found():
    assert {("train",), ("world", "build"), ("world", "pretrain"), ("datagen", "sft"), ("eval", "retrieval"),
            ("export",), ("compare",), ("demo",), ("eval", "t2i")} <= set(LEAVES)


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_every_option_with_a_default_names_it(path):
    parser = LEAVES[path]
    for action in parser._actions:
        if (not action.option_strings or action.required or action.default in (None, argparse.SUPPRESS, [])
                or isinstance(action, argparse._HelpAction)):
            continue  # none or an empty repeatable option: its help says in words what happens without it
        default = ",".join(action.default) if isinstance(action.default, (list, tuple)) and action.default else action.default
        assert str(default) in option_help(parser, action), f"{' '.join(path)} {action.option_strings[0]}"


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_every_optional_option_shows_its_default(path):
    """An option the user may leave out says what it is when left out: '(default: X)' or the words of its help."""
    parser = LEAVES[path]
    silent = [action.option_strings[0] for action in parser._actions
              if action.option_strings and not action.required
              and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
              and "default" not in option_help(parser, action)]
    assert not silent, f"{' '.join(path)}: options without a default in --help: {silent}"


SETTINGS = {  # command -> the settings classes whose fields are its flags
    ("world", "build"): (WorldSize,),
    ("world", "pretrain"): (PretrainSettings,),
    ("datagen", "sft"): (SFTSettings,),
    ("datagen", "dpo"): (DPOSettings,),
    ("datagen", "preferences"): (CaptionSource, SamplingSettings, LLMJudgeSettings),
    ("datagen", "generate"): (CaptionSource, GenerationSettings),
    ("datagen", "report"): (LLMJudgeSettings,),
}


@pytest.mark.parametrize("path", sorted(SETTINGS), ids=" ".join)
def test_every_field_is_a_flag_showing_its_default(path):
    parser = LEAVES[path]
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for cls in SETTINGS[path]:
        for f in dataclasses.fields(cls):
            action = flags[f"--{f.name.replace('_', '-')}"]
            text = option_help(parser, action)
            assert f"(default: {getattr(cls(), f.name)!r})" in text and f.metadata["help"][:20] in text, f.name


def settings_lines(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from settings_lines(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name} (default {value!r})"


@pytest.mark.parametrize("path,settings,prefix", [
    (("train",), TrainConfig(), ""),
    (("compare",), SaferClipConfig(), "safer-clip:"),
    (("compare",), UwmConfig(), "uwm:"),
])
def test_every_config_key_is_listed_with_its_default(path, settings, prefix):
    text = flat(LEAVES[path].format_help())
    for line in settings_lines(settings, prefix):
        assert line in text, line


def test_compare_lists_safe_clip_keys_with_the_recipe_defaults():
    from safeclip.methods.safe_clip import recipe_config

    text = flat(LEAVES[("compare",)].format_help())
    for line in settings_lines(recipe_config(), "safe-clip:"):
        assert line in text, line


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["eval", "t2i", "--help"]], ids=" ".join)
def test_help_prints_no_notice(argv):
    """No transformers 'requires torchvision' fallback notice, no warning: stderr stays empty."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "safeclip.cli", *argv], capture_output=True, text=True, check=True)
    assert result.stderr == "" and "usage: safeclip" in result.stdout
