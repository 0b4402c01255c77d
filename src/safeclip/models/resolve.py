"""Turn what a user points at into a model: a CLIP folder or hub id, a run folder, or base + adapters.

    bundle = resolve_model("runs/tiny")                       # run folder: its base + best adapters
    bundle = resolve_model("openai/clip-vit-large-patch14", adapters="runs/x/best")
    bundle = resolve_model("demo/model")                      # a merged Hugging Face CLIP folder
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from safeclip.models.clip import ClipBundle, ClipLoadError, load_clip
from safeclip.models.lora import apply_adapters, has_adapters


def run_base_model(run_dir: Path) -> str:
    """The base model a run folder's config.yaml names. A relative path is found from the working directory,
    else where the run recorded it (meta.json ``model_path``, absolute), else from the run folder."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    name = str(config["model"]["name"])
    meta = run_dir / "meta.json"
    recorded = json.loads(meta.read_text()).get("model_path", "") if meta.is_file() else ""
    for candidate in (Path(name), Path(recorded) if recorded else None, run_dir / name):
        if candidate is not None and candidate.exists():
            return str(candidate)
    return name  # a hub id


def load_run_base(run_dir: Path) -> ClipBundle:
    name = run_base_model(run_dir)
    try:
        return load_clip(name)
    except ClipLoadError as err:
        raise ClipLoadError(f"{err} The name comes from {run_dir / 'config.yaml'} (model.name); a relative path there "
                            "is looked up from the working directory and from the run folder") from err


def resolve_model(model: str | os.PathLike, *, adapters: str | os.PathLike | None = None) -> ClipBundle:
    """Load ``model``; apply ``adapters`` when given. A run folder means its base model plus ``best/``."""
    path = Path(model)
    if path.is_dir() and (path / "config.yaml").is_file() and (path / "best").is_dir() and adapters is None:
        return apply_adapters(load_run_base(path), path / "best")
    if path.is_dir() and has_adapters(path) and not (path / "config.json").exists():
        raise ClipLoadError(f"{path} holds adapters only; pass the base model too: --model BASE --adapters {path}")
    bundle = load_clip(model)
    if adapters:
        adapters = Path(adapters)
        if (adapters / "best").is_dir() and not has_adapters(adapters):
            adapters = adapters / "best"
        bundle = apply_adapters(bundle, adapters)
    return bundle
