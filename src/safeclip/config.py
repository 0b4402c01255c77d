"""Typed configuration: dataclasses with defaults and help, loaded from YAML with dotted overrides.

One dataclass tree drives Python, YAML files under ``configs/`` and the command line:

    cfg = load_config("configs/vit-l-14_safe-clip.yaml", ["optim.lr=5e-4", "data.batch_size=64"])

Every field carries ``metadata["help"]``; ``safeclip train --help`` prints them all.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from safeclip.errors import ConfigError  # noqa: F401  (raised here; imported from here by callers)

LOSS_TERM_NAMES = ("redirection_contrastive", "redirection_cosine", "preservation_cosine", "preservation_contrastive")
LOSS_HALF_NAMES = tuple(f"{term}_{side}" for term in LOSS_TERM_NAMES for side in ("text", "vision"))


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f("openai/clip-vit-large-patch14", "CLIP checkpoint: hub id or local folder (HF CLIP layout).")
    dtype: str = _f("float32", "Weights dtype of the loaded encoders: float32, bfloat16 or float16.")
    attn_implementation: str = _f("sdpa", "Attention kernel: sdpa (PyTorch scaled-dot-product attention), eager (the authors' era) or flash_attention_2.")


@dataclass
class LoraSettings:
    r: int = _f(16, "LoRA rank on both encoders (paper: 16).")
    alpha: float = _f(1.0, "LoRA alpha; the update is scaled by alpha / r (authors' script and shipped configs: 1; the offline demo's recipe sets 16).")
    dropout: float = _f(0.1, "Dropout on the LoRA branch (authors: 0.1).")
    target_modules: list = _f(
        ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"],
        "Module names that get LoRA adapters, in both encoders (authors' list).",
    )
    train_text: bool = _f(True, "Fine-tune the text encoder.")
    train_vision: bool = _f(True, "Fine-tune the vision encoder.")


@dataclass
class DataConfig:
    train: str = _f("", "Training quadruplets: ViSU JSON, ViSU-Text JSON/JSONL/CSV or a quadruplet JSONL/CSV.")
    val: str = _f("", "Validation quadruplets (same formats); empty disables validation.")
    format: str = _f("auto", "Input format: auto, visu, visu-text, table (JSONL/CSV with quadruplet columns).")
    image_root: str = _f("", "Folder that relative image paths start from (default: the data file's folder; ViSU: the COCO root).")
    unsafe_image_root: str = _f("", "Folder for ViSU's nsfw_im_path entries (default: image_root).")
    batch_size: int = _f(128, "Quadruplets per optimizer step, summed over processes (paper: 128).")
    num_workers: int = _f(0, "DataLoader worker processes.")
    text_padding: str = _f("longest", "Pad text to the longest caption in the batch ('longest') or to the model maximum ('max_length', the authors' 77).")
    skip_bad_rows: bool = _f(False, "Skip rows with missing/corrupt images or fields, count them and report the count, instead of failing.")
    max_rows: int = _f(0, "Use only the first N rows of each split (0: all).")
    cache_references: bool = _f(True, "Compute the frozen references T0(t), V0(v) once and cache them on disk (exact; saves two encoder passes per step).")
    reference_cache_dir: str = _f("", "Folder for the reference cache (default: <run.out_dir>/reference_cache).")
    image_cache_gb: float = _f(8.0, "With num_workers=0, keep the preprocessed training images in memory (decoded once) when they fit in this many GiB; larger sets are decoded every epoch (then use num_workers).")


@dataclass
class LossConfig:
    temperature: float = _f(0.01, "Contrastive temperature tau (authors: logit scale 100 = 1/0.01).")
    redirection_contrastive: float = _f(0.375, "Weight of Eq. 4, both halves (authors' lambdas 0.25 text / 0.5 vision, averaged).")
    redirection_cosine: float = _f(0.15, "Weight of Eq. 5, both halves (authors' 0.1 text / 0.2 vision, averaged).")
    preservation_cosine: float = _f(0.1, "Weight of Eq. 6, both halves (authors' 0.1 text / 0.1 vision).")
    preservation_contrastive: float = _f(0.25, "Weight of Eq. 7, both halves (authors' 0.25 text / 0.25 vision).")
    redirection_contrastive_text: Optional[float] = _f(None, "Weight of Eq. 4's text half InfoNCE(T(t*), V0(v)) alone (empty: redirection_contrastive).")
    redirection_contrastive_vision: Optional[float] = _f(None, "Weight of Eq. 4's vision half InfoNCE(T0(t), V(v*)) alone (empty: redirection_contrastive).")
    redirection_cosine_text: Optional[float] = _f(None, "Weight of Eq. 5's text half cos(T(t*), T0(t)) alone (empty: redirection_cosine).")
    redirection_cosine_vision: Optional[float] = _f(None, "Weight of Eq. 5's vision half cos(V(v*), V0(v)) alone (empty: redirection_cosine).")
    preservation_cosine_text: Optional[float] = _f(None, "Weight of Eq. 6's text half cos(T(t), T0(t)) alone (empty: preservation_cosine).")
    preservation_cosine_vision: Optional[float] = _f(None, "Weight of Eq. 6's vision half cos(V(v), V0(v)) alone (empty: preservation_cosine).")
    preservation_contrastive_text: Optional[float] = _f(None, "Weight of Eq. 7's text half InfoNCE(T(t), V0(v)) alone (empty: preservation_contrastive).")
    preservation_contrastive_vision: Optional[float] = _f(None, "Weight of Eq. 7's vision half InfoNCE(T0(t), V(v)) alone (empty: preservation_contrastive).")
    info_nce_scale: float = _f(1.0, "Factor on each symmetric InfoNCE (CE rows + CE columns): 1 as Eq. 4/7 are written; the authors' code uses 0.5.")
    cosine_form: str = _f("negative", "Cosine terms (Eq. 5/6) as 'negative' (-cos, the paper) or 'distance' (1 - cos, the authors; same gradients).")
    gather_across_processes: bool = _f(True, "Contrastive terms (Eq. 4, 7) over the global batch: all-gather embeddings across processes (no effect with one process).")

    def weights(self) -> dict[str, float]:
        """The four term weights, plus every half whose own weight is set (see safeclip.losses.LOSS_HALVES)."""
        weights = {name: float(getattr(self, name)) for name in LOSS_TERM_NAMES}
        weights.update({name: float(getattr(self, name)) for name in LOSS_HALF_NAMES if getattr(self, name) is not None})
        return weights


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "Adam learning rate (paper: 1e-3).")
    weight_decay: float = _f(0.0, "Adam weight decay.")
    epochs: int = _f(50, "Maximum epochs (authors: 50).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (batch_size is split into this many).")
    max_grad_norm: float = _f(0.0, "Clip gradients to this norm (0: no clipping).")
    patience: int = _f(5, "Stop after this many epochs without a better validation score (see selection; authors: 5; 0: never).")
    selection: str = _f("recall_sum", "Model selection and early stopping: 'recall_sum' (best/ = highest sum of every R@k of the "
                        "validation protocol; patience counts epochs without a better one) or 'loss_or_recall' (the "
                        "authors': patience resets when the validation loss or the recall sum improves; best/ by recall, "
                        "best_loss/ by validation loss).")
    max_steps: int = _f(0, "Stop after this many optimizer steps in total (0: no limit).")


@dataclass
class RunConfig:
    out_dir: str = _f("runs/safeclip", "Run folder: config, logs, checkpoints, best model.")
    seed: int = _f(0, "Seed for Python, NumPy and torch (data order, LoRA init, dropout).")
    mixed_precision: str = _f("no", "Accelerate mixed precision: no, bf16 or fp16.")
    resume: bool = _f(False, "Continue from the newest checkpoint in out_dir (optimizer, epoch, RNG, patience).")
    log_every: int = _f(10, "Write the per-term losses to train_log.jsonl every N optimizer steps.")
    log_with: str = _f("", "Also log to 'tensorboard' or 'wandb' (off by default).")
    eval_batch_size: int = _f(256, "Batch size for embedding the validation set.")
    progress: bool = _f(True, "Show progress bars.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory for ViT-H/14 or large batches, ~30% slower).")
    compile: bool = _f(False, "torch.compile the encoders (GPU; pays off on long runs).")
    checkpoint_every_steps: int = _f(0, "Also checkpoint every N optimizer steps inside an epoch, resumable exactly mid-epoch (0: only at epoch ends).")
    keep_checkpoints: int = _f(1, "How many of the newest checkpoints to keep in <out_dir>/checkpoints.")


@dataclass
class HysacSettings:
    curv_init: float = _f(1.0, "HySAC: initial curvature c of the hyperboloid (curvature -c); learned within [c0/10, 10 c0] (authors: 1).")
    learn_curv: bool = _f(True, "HySAC: learn the curvature (authors: true).")
    entailment_weight: float = _f(1.0, "HySAC: lambda_e, weight of each entailment term before the authors' normalisation (lambda / sum / 7).")
    weights: dict = _f({}, "HySAC: explicit weight per loss term (safeclip.hysac.losses.LOSS_TERMS) instead of the authors' normalised ones.")
    aperture_scale: float = _f(1.0, "HySAC: eta, multiplier of the entailment cone's half-aperture (authors: 1).")
    bounds_split: str = _f("val", "HySAC: split whose distances to the origin give the safety bounds stored with the best model ('val' or 'train').")


@dataclass
class TrainConfig:
    method: str = _f("safe-clip", "Training objective: safe-clip (Eq. 4-7) or hysac (hyperbolic contrastive + entailment, HySAC CVPR 2025).")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    hysac: HysacSettings = field(default_factory=HysacSettings)

    def validate(self) -> TrainConfig:
        checks = [
            (self.method in {"safe-clip", "hysac"}, f"method must be safe-clip or hysac, got {self.method!r}"),
            (self.hysac.curv_init > 0, "hysac.curv_init must be > 0 (the hyperboloid's curvature is -c)"),
            (self.hysac.bounds_split in {"val", "train"}, "hysac.bounds_split must be 'val' or 'train'"),
            (self.lora.r > 0, "lora.r must be a positive integer (paper: 16)"),
            (self.lora.train_text or self.lora.train_vision, "at least one of lora.train_text / lora.train_vision must be true"),
            (0.0 <= self.lora.dropout < 1.0, "lora.dropout must lie in [0, 1)"),
            (self.data.batch_size >= 2, "data.batch_size must be at least 2 (contrastive losses need negatives)"),
            (self.optim.grad_accum >= 1 and self.data.batch_size % self.optim.grad_accum == 0,
             "data.batch_size must be a multiple of optim.grad_accum (>= 1)"),
            (self.loss.temperature > 0, "loss.temperature must be > 0 (paper: 0.01)"),
            (self.optim.lr > 0, "optim.lr must be > 0 (paper: 1e-3)"),
            (self.optim.epochs >= 1, "optim.epochs must be >= 1"),
            (self.data.text_padding in {"longest", "max_length"}, "data.text_padding must be 'longest' or 'max_length'"),
            (self.optim.selection in {"recall_sum", "loss_or_recall"},
             "optim.selection must be 'recall_sum' or 'loss_or_recall' (the authors')"),
            (self.method == "safe-clip" or self.optim.selection == "recall_sum",
             "optim.selection=loss_or_recall is Safe-CLIP's early stopping (its validation loss is Eq. 4-7); "
             "method hysac selects by its own validation score: leave optim.selection at recall_sum"),
            (self.data.format in {"auto", "visu", "visu-text", "table"}, "data.format must be auto, visu, visu-text or table"),
            (self.run.mixed_precision in {"no", "bf16", "fp16"}, "run.mixed_precision must be no, bf16 or fp16"),
            (self.model.dtype in {"float32", "bfloat16", "float16"}, "model.dtype must be float32, bfloat16 or float16"),
            (self.model.attn_implementation in {"sdpa", "eager", "flash_attention_2"},
             "model.attn_implementation must be sdpa, eager or flash_attention_2"),
            (all(w >= 0 for w in self.loss.weights().values()), "loss weights must be >= 0"),
            (self.loss.info_nce_scale > 0, "loss.info_nce_scale must be > 0 (paper: 1; authors' code: 0.5)"),
            (self.loss.cosine_form in {"negative", "distance"}, "loss.cosine_form must be 'negative' or 'distance'"),
        ]
        checks = self.range_checks() + checks
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if not self.data.train:
            raise ConfigError("data.train is empty: give the training file, e.g. data.train=path/to/train.jsonl")
        return self


    def range_checks(self) -> list[tuple[bool, str]]:
        """Counts and rates that would fail (or silently mean something else) once training started."""
        finite = [(f"{section}.{f.name}", getattr(getattr(self, section), f.name))
                  for section in ("lora", "loss", "optim", "data") for f in dataclasses.fields(getattr(self, section))
                  if isinstance(getattr(getattr(self, section), f.name), float)]
        return [
            *[(math.isfinite(value), f"{key} must be a finite number, got {value}") for key, value in finite],
            (self.run.log_every >= 1, f"run.log_every must be >= 1 (log every N steps), got {self.run.log_every}"),
            (self.optim.max_steps >= 0, f"optim.max_steps must be >= 0 (0: no limit), got {self.optim.max_steps}"),
            (self.optim.patience >= 0, f"optim.patience must be >= 0 (0: never stop early), got {self.optim.patience}"),
            (self.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (self.optim.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0: no clipping)"),
            (self.lora.alpha > 0, "lora.alpha must be > 0"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            (self.data.max_rows >= 0, "data.max_rows must be >= 0 (0: all rows)"),
            (self.data.image_cache_gb >= 0, "data.image_cache_gb must be >= 0"),
            (self.run.eval_batch_size >= 1, "run.eval_batch_size must be >= 1"),
            (self.run.checkpoint_every_steps >= 0, "run.checkpoint_every_steps must be >= 0 (0: epoch ends only)"),
            (self.run.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
        ]


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation in (Any, None):
        return value
    if isinstance(annotation, str) and annotation.startswith("Optional["):
        return None if value is None or value == "" else _coerce(value, annotation[len("Optional["):-1], key)
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}.get(annotation, Any)
        return _coerce(value, annotation, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
            return value.lower() in {"true", "1", "yes", "on"}
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool) or (annotation is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key} must be a whole number, got {value!r}" if annotation is int
                              else f"{key} must be a number, got {value!r}")
        try:
            number = annotation(value) if not isinstance(value, str) else annotation(float(value) if annotation is float else value)
        except (TypeError, ValueError, OverflowError) as err:
            raise ConfigError(f"{key} must be a {annotation.__name__}, got {value!r}") from err
        return number
    if annotation is str:
        return "" if value is None else str(value)
    if annotation is list or origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def _apply(cfg: Any, data: dict, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key '{dotted}'. Known keys here: {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' is a section; give a mapping of its keys")
            _apply(current, value, dotted + ".")
        else:
            setattr(cfg, key, _coerce(value, fields[key].type, dotted))


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "lora.r=8"]`` -> nested dict; values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = TrainConfig) -> Any:
    """Build a config from defaults, then a YAML file, then ``key=value`` overrides."""
    cfg = cls()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (shipped examples are under configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        _apply(cfg, data)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Any, overrides: list[str] | None) -> Any:
    """Apply dotted ``key=value`` overrides to the config ``cfg`` in place (typed like its fields); returns it."""
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    return cfg


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (an argparse ``type``: a bad entry is a usage error naming it)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if not s.lstrip("-").isdigit()]
    if bad:
        raise ConfigError(f"seeds must be comma-separated integers, e.g. 0,1,2; got {', '.join(map(repr, bad))}")
    return [int(s) for s in items]


def describe_config(cls: type = TrainConfig) -> str:
    """One line per field: ``section.key (default): help``; printed by ``--help``."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} (default {value!r}): {f.metadata.get('help', '')}")

    walk(cls(), "")
    return "\n".join(lines)
