"""``hysac`` and ``hysac+traversal`` behind the methods interface: HySAC trained by the project's loop.

    from safeclip.methods import MethodInputs, get_method
    model = get_method("hysac")(MethodInputs(base="demo/base", train="w/train.jsonl", val="w/val.jsonl",
                                             out_dir="compare/methods/hysac"))       # a HysacBundle

The recipe is ``recipes/hysac_demo.yaml`` (``method: hysac``; real backbones: an override
``config=configs/vit-l-14_hysac.yaml``); other overrides are dotted config keys (e.g.
``hysac.entailment_weight=0.5``). The budget's epochs, batch size and row limit apply as for
``safe-clip``. The run folder is ``out_dir/run`` (resumable, reused once finished); its
``best/hysac.json`` carries the safety bounds measured on the validation split.

``hysac+traversal`` is the same trained model (it trains, or reuses, the run under the sibling
folder ``methods/hysac``) with safety traversal on every query at evaluation time (the authors'
rule; an override ``traversal=geodesic`` picks the geodesic one).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from safeclip.config import TrainConfig, load_config
from safeclip.errors import ConfigError
from safeclip.methods.base import MethodInputs
from safeclip.methods.safe_clip import safe_clip_config


def hysac_recipe_path() -> Path:
    """``recipes/hysac_demo.yaml``: HySAC's settings in the offline world."""
    return Path(str(resources.files("safeclip") / "recipes" / "hysac_demo.yaml"))


def hysac_config(inputs: MethodInputs) -> TrainConfig:
    """The run's :class:`TrainConfig`: ``inputs.settings`` or the HySAC recipe, with the inputs' base, data,
    run folder, seed and budget set as for ``safe-clip`` (:func:`safe_clip_config`), then the overrides."""
    settings = inputs.settings if inputs.settings is not None else load_config(hysac_recipe_path())
    cfg = safe_clip_config(dataclasses.replace(inputs, settings=settings))
    if cfg.method != "hysac":
        raise ConfigError(f"the hysac method needs a recipe with method: hysac (got method: {cfg.method}); "
                          "use configs/vit-l-14_hysac.yaml or recipes/hysac_demo.yaml")
    return cfg


def run_hysac(inputs: MethodInputs):
    from safeclip.hysac.model import load_hysac
    from safeclip.train import train

    run_dir = inputs.out / "run"
    if not (run_dir / "summary.json").is_file():
        train(hysac_config(inputs))
    return load_hysac(run_dir)


def run_hysac_traversal(inputs: MethodInputs):
    from safeclip.hysac.traversal import RULES

    rule, rest = "authors", []
    for item in inputs.overrides:
        if item.startswith("traversal="):
            rule = item.split("=", 1)[1]
        else:
            rest.append(item)
    if rule not in RULES:
        raise ConfigError(f"traversal={rule!r}: choose one of {', '.join(RULES)}")
    model = run_hysac(dataclasses.replace(inputs, out_dir=inputs.out.parent / "hysac", overrides=rest))
    model.traversal = rule
    return model
