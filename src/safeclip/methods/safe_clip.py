"""``safe-clip`` behind the methods interface: the paper's fine-tuning (``safeclip.train``) with a recipe.

    from safeclip.methods import MethodInputs, get_method
    bundle = get_method("safe-clip")(MethodInputs(base="demo/base", train="w/train.jsonl", val="w/val.jsonl",
                                                  out_dir="compare/methods/safe-clip"))

The recipe is a typed :class:`~safeclip.config.TrainConfig`: ``inputs.settings`` when given, else
``recipes/demo.yaml`` (the settings measured on the offline world). The run's base model, data, folder,
seed and progress and the budget's epochs, batch size and row limit are set on it as typed fields (no
string is re-parsed), then ``inputs.overrides`` apply on top as dotted config overrides (e.g.
``loss.temperature=0.01``); an override ``config=PATH`` replaces the recipe (real backbones:
``config=configs/vit-l-14_safe-clip.yaml``). The run folder is ``out_dir/run`` (resumable, reused once
``summary.json`` exists); the result is the base model with the best LoRA adapters applied.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

from safeclip.config import TrainConfig, apply_overrides, load_config
from safeclip.methods.base import MethodInputs
from safeclip.models.clip import ClipBundle
from safeclip.models.resolve import resolve_model


def recipe_path() -> Path:
    """``recipes/demo.yaml``: the Safe-CLIP settings measured on the offline world."""
    return Path(str(resources.files("safeclip") / "recipes" / "demo.yaml"))


def recipe_config() -> TrainConfig:
    """The offline world's Safe-CLIP recipe as a typed config (model, data and run folder still unset)."""
    return load_config(recipe_path())


def safe_clip_config(inputs: MethodInputs) -> TrainConfig:
    """The :class:`TrainConfig` of the run in ``inputs.out / "run"`` (see the module docstring)."""
    recipes = [item.split("=", 1)[1] for item in inputs.overrides if item.startswith("config=")]
    overrides = [item for item in inputs.overrides if not item.startswith("config=")]
    if recipes:
        cfg = load_config(recipes[-1])
    else:
        cfg = copy.deepcopy(inputs.settings) if inputs.settings is not None else recipe_config()
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"safe-clip settings must be a TrainConfig (safeclip.config), got {type(cfg).__name__}")
    run_dir = inputs.out / "run"
    cfg.model.name = str(inputs.base)
    cfg.data.train = str(inputs.train)
    if inputs.val:
        cfg.data.val = str(inputs.val)
    cfg.run.out_dir = str(run_dir)
    cfg.run.seed = inputs.seed
    cfg.run.progress = inputs.progress
    cfg.run.resume = (run_dir / "checkpoints").exists()
    cfg.optim.epochs = inputs.budget.epochs
    cfg.data.batch_size = inputs.budget.batch_size
    cfg.data.max_rows = inputs.budget.max_rows
    return apply_overrides(cfg, overrides)


def run_safe_clip(inputs: MethodInputs) -> ClipBundle:
    from safeclip.train import train

    run_dir = inputs.out / "run"
    if not (run_dir / "summary.json").is_file():
        train(safe_clip_config(inputs))
    return resolve_model(run_dir)
