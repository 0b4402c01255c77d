"""configs/tiny.yaml is a real CPU smoke config: its header's commands build a world and base, and
`safeclip train --config configs/tiny.yaml` then trains on them."""

import json
import shlex
from pathlib import Path

from safeclip.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def header_commands() -> list[list[str]]:
    lines = [line.lstrip("# ").strip() for line in CONFIG.read_text().splitlines() if line.startswith("#")]
    return [shlex.split(line)[1:] for line in lines if line.startswith("safeclip ")]


def test_tiny_config_trains_on_the_world_its_header_builds(tmp_path, monkeypatch):
    commands = header_commands()
    assert commands[0] == ["train", "--config", "configs/tiny.yaml"]  # the file starts with its launch command
    monkeypatch.chdir(tmp_path)
    for argv in commands[1:]:  # world build, world pretrain
        assert main(argv) == 0
    assert main(["train", "--config", str(CONFIG), "run.progress=false"]) == 0
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert (tmp_path / "runs" / "tiny" / "best").is_dir() and summary["step"] > 0
