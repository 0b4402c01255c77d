"""One small interface for every way of making a CLIP safe, and a registry of them by name.

    from safeclip.methods import MethodInputs, Budget, get_method, METHOD_NAMES
    inputs = MethodInputs(base="demo/base", train="demo/world/train.jsonl", val="demo/world/val.jsonl",
                          out_dir="compare/methods/uwm", seed=0, budget=Budget(epochs=3))
    bundle = get_method("uwm")(inputs)        # a ClipBundle: the safe model (LoRA adapters or edited weights)

A method takes a base model (a CLIP folder or hub id), quadruplet data (the project's table formats:
``safe_text, unsafe_text, safe_image, unsafe_image``) and a budget, writes what it produced under
``out_dir`` (adapters, an edit, a run folder; rerunning with a finished ``out_dir`` reuses it) and
returns the safe :class:`~safeclip.models.clip.ClipBundle`. Methods:

- ``safe-clip``: the paper's fine-tuning (``safeclip.train``), :mod:`safeclip.methods.safe_clip`
- ``safer-clip``: SafeR-CLIP's proximity targets + relative redirection + curriculum, :mod:`safeclip.methods.safer_clip`
- ``uwm``: training-free Unsafe Weights Manipulation (a reversible weight edit), :mod:`safeclip.methods.uwm`
- ``hysac`` / ``hysac+traversal``: HySAC (hyperbolic, safety-aware; a :class:`~safeclip.hysac.model.HysacBundle`),
  without and with safety traversal at evaluation, :mod:`safeclip.methods.hysac`
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeclip.config import Settings, setting
from safeclip.errors import ConfigError
from safeclip.models.clip import ClipBundle

# name -> "module:function"; imported lazily so listing names stays cheap.
METHODS: dict[str, str] = {
    "safe-clip": "safeclip.methods.safe_clip:run_safe_clip",
    "safer-clip": "safeclip.methods.safer_clip:run_safer_clip",
    "uwm": "safeclip.methods.uwm:run_uwm",
    "hysac": "safeclip.methods.hysac:run_hysac",
    "hysac+traversal": "safeclip.methods.hysac:run_hysac_traversal",
}
METHOD_NAMES = tuple(METHODS)
DEFAULT_METHODS = ("safe-clip", "safer-clip", "uwm")  # what `safeclip compare` runs without --methods


@dataclass
class Budget(Settings):
    """What every trained method gets, so that a comparison is fair (training-free methods ignore most of it)."""

    epochs: int = setting(3, "Passes over the training quadruplets.", ge=1)
    batch_size: int = setting(128, "Quadruplets per optimizer step.", ge=2)
    max_rows: int = setting(0, "Use only the first N training rows (0: all).", ge=0)
    calibration_rows: int = setting(1024, "UWM: (safe, unsafe) tuples used for calibration (paper: ~8k).", ge=1)


@dataclass
class MethodInputs:
    """Everything a method needs: base model, data, output folder, seed, budget and free-form overrides."""

    base: str | os.PathLike  # CLIP folder or hub id
    train: str | os.PathLike  # training quadruplets (JSONL/CSV/ViSU)
    out_dir: str | os.PathLike  # the method's own folder
    val: str | os.PathLike | None = None  # validation quadruplets (used by safe-clip for model selection)
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    overrides: list[str] = field(default_factory=list)  # method-specific "key=value" settings
    progress: bool = True
    # The method's typed settings, used instead of its defaults (overrides apply on top). safe-clip: a
    # TrainConfig recipe (default: recipes/demo.yaml); the other methods read only ``overrides``.
    settings: Any = None

    @property
    def out(self) -> Path:
        return Path(self.out_dir)


Method = Callable[[MethodInputs], ClipBundle]


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHOD_NAMES)}")
    module, function = METHODS[name].split(":")
    return getattr(importlib.import_module(module), function)
