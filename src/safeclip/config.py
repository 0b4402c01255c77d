"""Typed settings: dataclasses with defaults and help, loaded from YAML with dotted overrides, validated.

One mechanism for every settings dataclass of the project (training, pretraining, methods, data generation):
each field is declared with :func:`setting` (a default, one line of help, optional ``choices`` and range);
:func:`load_settings` builds it from the defaults, then a YAML file (or one section of it), then ``key=value``
overrides; values are parsed by the field's type, strictly (a boolean is true/false/yes/no/on/off/1/0, any
other word is an error naming the key); :func:`check_settings` checks types, choices and ranges;
:func:`describe_settings` lists every field with its default for ``--help``.

    cfg = load_config("configs/vit-l-14_safe-clip.yaml", ["optim.lr=5e-4", "data.batch_size=64"])
    settings = load_settings(PretrainSettings, overrides=["epochs=2", "text_padding=max_length"])

The command-line side (one ``--flag`` per field of a flat settings class) is :mod:`safeclip.commands.options`.
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

from safeclip.errors import ConfigError

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")

LOSS_TERM_NAMES = ("redirection_contrastive", "redirection_cosine", "preservation_cosine", "preservation_contrastive")
LOSS_HALF_NAMES = tuple(f"{term}_{side}" for term in LOSS_TERM_NAMES for side in ("text", "vision"))


def setting(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a default, one line of help and optional allowed values / bounds (checked by
    :func:`check_settings`, listed by :func:`describe_settings`)."""
    metadata = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(factory: Any, help: str) -> Any:
    """A dataclass field holding a nested settings object (built by ``factory``), with one line of help."""
    return field(default_factory=factory, metadata={"help": help})


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of the settings dataclass ``cls`` (its help, choices and bounds) with another ``default``: how
    a settings subclass changes a default without repeating the field."""
    found = {f.name: f for f in dataclasses.fields(cls)}
    if name not in found:
        raise ValueError(f"{cls.__name__} has no setting {name!r} (it has {', '.join(found)})")
    meta = found[name].metadata
    return setting(default, meta["help"], **{key: meta[key] for key in ("choices", "ge", "gt", "le", "lt")})


_f = setting  # the short name the fields below use


class Settings:
    """Base of every settings dataclass: constructing one checks every field (:func:`check_settings`)."""

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class ModelConfig(Settings):
    name: str = _f("openai/clip-vit-large-patch14", "CLIP checkpoint: hub id or local folder (HF CLIP layout).")
    dtype: str = _f("float32", "Weights dtype of the loaded encoders: float32, bfloat16 or float16.", choices=("float32", "bfloat16", "float16"))
    attn_implementation: str = _f("sdpa", "Attention kernel: sdpa (PyTorch scaled-dot-product attention), eager (the authors' era) or flash_attention_2.", choices=("sdpa", "eager", "flash_attention_2"))


@dataclass
class LoraSettings(Settings):
    r: int = _f(16, "LoRA rank on both encoders (paper: 16).", gt=0)
    alpha: float = _f(1.0, "LoRA alpha; the update is scaled by alpha / r (authors' script and shipped configs: 1; the offline demo's recipe sets 16).", gt=0)
    dropout: float = _f(0.1, "Dropout on the LoRA branch (authors: 0.1).", ge=0.0, lt=1.0)
    target_modules: list = _f(
        ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"],
        "Module names that get LoRA adapters, in both encoders (authors' list).",
    )
    train_text: bool = _f(True, "Fine-tune the text encoder.")
    train_vision: bool = _f(True, "Fine-tune the vision encoder.")


@dataclass
class DataConfig(Settings):
    train: str = _f("", "Training quadruplets: ViSU JSON, ViSU-Text JSON/JSONL/CSV or a quadruplet JSONL/CSV.")
    val: str = _f("", "Validation quadruplets (same formats); empty disables validation.")
    format: str = _f("auto", "Input format: auto, visu, visu-text, table (JSONL/CSV with quadruplet columns).", choices=("auto", "visu", "visu-text", "table"))
    image_root: str = _f("", "Folder that relative image paths start from (default: the data file's folder; ViSU: the COCO root).")
    unsafe_image_root: str = _f("", "Folder for ViSU's nsfw_im_path entries (default: image_root).")
    batch_size: int = _f(128, "Quadruplets per optimizer step, summed over processes (paper: 128).", ge=2)
    num_workers: int = _f(0, "DataLoader worker processes.", ge=0)
    text_padding: str = _f("longest", "Pad text to the longest caption in the batch ('longest') or to the model maximum ('max_length', the authors' 77).", choices=("longest", "max_length"))
    skip_bad_rows: bool = _f(False, "Skip rows with missing/corrupt images or fields, count them and report the count, instead of failing.")
    max_rows: int = _f(0, "Use only the first N rows of each split (0: all).", ge=0)
    cache_references: bool = _f(True, "Compute the frozen references T0(t), V0(v) once and cache them on disk (exact; saves two encoder passes per step).")
    reference_cache_dir: str = _f("", "Folder for the reference cache (default: <run.out_dir>/reference_cache).")
    image_cache_gb: float = _f(8.0, "With num_workers=0, keep the preprocessed training images in memory (decoded once) when they fit in this many GiB; larger sets are decoded every epoch (then use num_workers).", ge=0.0)


@dataclass
class AdversarialSettings(Settings):
    enabled: bool = _f(False, "Adversarial training (safeclip.adversarial_training): each step an inner attack makes harder unsafe "
                       "texts (token-embedding perturbation) and images (PGD), and the redirection terms (Eq. 4, 5) apply to them too.")
    weight: float = _f(1.0, "Factor on the redirection terms computed on the attacked unsafe inputs (added to the total).", ge=0.0)
    text_eps: float = _f(1.0, "Radius of the unsafe text's token-embedding perturbation, as a multiple of the token-embedding table's RMS entry.", ge=0.0)
    text_norm: str = _f("linf", "Norm of the token-embedding budget: 'linf' (per entry) or 'l2' (per prompt, over all its tokens).", choices=("linf", "l2"))
    text_steps: int = _f(3, "Signed-gradient (linf) or normalised-gradient (l2) steps of the text attack (0: no text attack).", ge=0)
    text_suffix: int = _f(4, "0: perturb the unsafe caption's own token embeddings; N > 0: append N token slots before each unsafe "
                          "caption's end token (random vocabulary tokens, redrawn every step) and perturb only their embeddings "
                          "(the threat of the GCG / PEZ suffix attacks; the caption is kept).", ge=0)
    image_eps: float = _f(4.0, "L-infinity radius of the PGD attack on unsafe images, in grey levels (/255).", ge=0.0, le=255.0)
    image_steps: int = _f(3, "PGD steps on unsafe images (0: no image attack).", ge=0)


@dataclass
class LossConfig(Settings):
    temperature: float = _f(0.01, "Contrastive temperature tau (authors: logit scale 100 = 1/0.01).", gt=0.0)
    redirection_contrastive: float = _f(0.375, "Weight of Eq. 4, both halves (authors' lambdas 0.25 text / 0.5 vision, averaged).", ge=0.0)
    redirection_cosine: float = _f(0.15, "Weight of Eq. 5, both halves (authors' 0.1 text / 0.2 vision, averaged).", ge=0.0)
    preservation_cosine: float = _f(0.1, "Weight of Eq. 6, both halves (authors' 0.1 text / 0.1 vision).", ge=0.0)
    preservation_contrastive: float = _f(0.25, "Weight of Eq. 7, both halves (authors' 0.25 text / 0.25 vision).", ge=0.0)
    redirection_contrastive_text: Optional[float] = _f(None, "Weight of Eq. 4's text half InfoNCE(T(t*), V0(v)) alone (empty: redirection_contrastive).", ge=0.0)
    redirection_contrastive_vision: Optional[float] = _f(None, "Weight of Eq. 4's vision half InfoNCE(T0(t), V(v*)) alone (empty: redirection_contrastive).", ge=0.0)
    redirection_cosine_text: Optional[float] = _f(None, "Weight of Eq. 5's text half cos(T(t*), T0(t)) alone (empty: redirection_cosine).", ge=0.0)
    redirection_cosine_vision: Optional[float] = _f(None, "Weight of Eq. 5's vision half cos(V(v*), V0(v)) alone (empty: redirection_cosine).", ge=0.0)
    preservation_cosine_text: Optional[float] = _f(None, "Weight of Eq. 6's text half cos(T(t), T0(t)) alone (empty: preservation_cosine).", ge=0.0)
    preservation_cosine_vision: Optional[float] = _f(None, "Weight of Eq. 6's vision half cos(V(v), V0(v)) alone (empty: preservation_cosine).", ge=0.0)
    preservation_contrastive_text: Optional[float] = _f(None, "Weight of Eq. 7's text half InfoNCE(T(t), V0(v)) alone (empty: preservation_contrastive).", ge=0.0)
    preservation_contrastive_vision: Optional[float] = _f(None, "Weight of Eq. 7's vision half InfoNCE(T0(t), V(v)) alone (empty: preservation_contrastive).", ge=0.0)
    info_nce_scale: float = _f(1.0, "Factor on each symmetric InfoNCE (CE rows + CE columns): 1 as Eq. 4/7 are written; the authors' code uses 0.5.", gt=0.0)
    cosine_form: str = _f("negative", "Cosine terms (Eq. 5/6) as 'negative' (-cos, the paper) or 'distance' (1 - cos, the authors; same gradients).", choices=("negative", "distance"))
    gather_across_processes: bool = _f(True, "Contrastive terms (Eq. 4, 7) over the global batch: all-gather embeddings across processes (no effect with one process).")
    adversarial: AdversarialSettings = field(default_factory=AdversarialSettings)

    def weights(self) -> dict[str, float]:
        """The four term weights, plus every half whose own weight is set (see safeclip.losses.LOSS_HALVES)."""
        weights = {name: float(getattr(self, name)) for name in LOSS_TERM_NAMES}
        weights.update({name: float(getattr(self, name)) for name in LOSS_HALF_NAMES if getattr(self, name) is not None})
        return weights


@dataclass
class OptimConfig(Settings):
    lr: float = _f(1e-3, "Adam learning rate (paper: 1e-3).", gt=0.0)
    weight_decay: float = _f(0.0, "Adam weight decay.", ge=0.0)
    epochs: int = _f(50, "Maximum epochs (authors: 50).", ge=1)
    grad_accum: int = _f(1, "Micro-batches per optimizer step (batch_size is split into this many).", ge=1)
    max_grad_norm: float = _f(0.0, "Clip gradients to this norm (0: no clipping).", ge=0.0)
    patience: int = _f(5, "Stop after this many epochs without a better validation score (see selection; authors: 5; 0: never).", ge=0)
    selection: str = _f("recall_sum", "Model selection and early stopping: 'recall_sum' (best/ = highest sum of every R@k of the "
                        "validation protocol; patience counts epochs without a better one) or 'loss_or_recall' (the "
                        "authors': patience resets when the validation loss or the recall sum improves; best/ by recall, "
                        "best_loss/ by validation loss).", choices=("recall_sum", "loss_or_recall"))
    max_steps: int = _f(0, "Stop after this many optimizer steps in total (0: no limit).", ge=0)


@dataclass
class RunConfig(Settings):
    out_dir: str = _f("runs/safeclip", "Run folder: config, logs, checkpoints, best model.")
    seed: int = _f(0, "Seed for Python, NumPy and torch (data order, LoRA init, dropout).")
    mixed_precision: str = _f("no", "Accelerate mixed precision: no, bf16 or fp16.", choices=("no", "bf16", "fp16"))
    resume: bool = _f(False, "Continue from the newest checkpoint in out_dir (optimizer, epoch, RNG, patience).")
    log_every: int = _f(10, "Write the per-term losses to train_log.jsonl every N optimizer steps.", ge=1)
    log_with: str = _f("", "Also log to 'tensorboard' or 'wandb' (off by default).")
    eval_batch_size: int = _f(256, "Batch size for embedding the validation set.", ge=1)
    progress: bool = _f(True, "Show progress bars.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory for ViT-H/14 or large batches, ~30% slower).")
    compile: bool = _f(False, "torch.compile the encoders (GPU; pays off on long runs).")
    checkpoint_every_steps: int = _f(0, "Also checkpoint every N optimizer steps inside an epoch, resumable exactly mid-epoch (0: only at epoch ends).", ge=0)
    keep_checkpoints: int = _f(1, "How many of the newest checkpoints to keep in <out_dir>/checkpoints.", ge=1)


@dataclass
class HysacSettings(Settings):
    curv_init: float = _f(1.0, "HySAC: initial curvature c of the hyperboloid (curvature -c); learned within [c0/10, 10 c0] (authors: 1).", gt=0.0)
    learn_curv: bool = _f(True, "HySAC: learn the curvature (authors: true).")
    entailment_weight: float = _f(1.0, "HySAC: lambda_e, weight of each entailment term before the authors' normalisation (lambda / sum / 7).", ge=0.0)
    weights: dict = _f({}, "HySAC: explicit weight per loss term (safeclip.hysac.losses.LOSS_TERMS) instead of the authors' normalised ones.")
    aperture_scale: float = _f(1.0, "HySAC: eta, multiplier of the entailment cone's half-aperture (authors: 1).", gt=0.0)
    bounds_split: str = _f("val", "HySAC: split whose distances to the origin give the safety bounds stored with the best model ('val' or 'train').", choices=("val", "train"))


@dataclass
class TrainConfig(Settings):
    method: str = _f("safe-clip", "Training objective: safe-clip (Eq. 4-7) or hysac (hyperbolic contrastive + entailment, HySAC CVPR 2025).", choices=("safe-clip", "hysac"))
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    hysac: HysacSettings = field(default_factory=HysacSettings)

    def validate(self) -> TrainConfig:
        """Every field (:func:`check_settings`), then the rules that tie fields together."""
        check_settings(self)
        if not (self.lora.train_text or self.lora.train_vision):
            raise ConfigError("at least one of lora.train_text / lora.train_vision must be true")
        if self.data.batch_size % self.optim.grad_accum:
            raise ConfigError(f"data.batch_size={self.data.batch_size} must be a multiple of optim.grad_accum="
                              f"{self.optim.grad_accum}")
        if self.method != "safe-clip" and self.loss.adversarial.enabled:
            raise ConfigError("loss.adversarial applies to method safe-clip only; set loss.adversarial.enabled=false for hysac")
        if self.method != "safe-clip" and self.optim.selection != "recall_sum":
            raise ConfigError("optim.selection=loss_or_recall is Safe-CLIP's early stopping (its validation loss is "
                              "Eq. 4-7); method hysac selects by its own validation score: leave optim.selection at "
                              "recall_sum")
        if not self.data.train:
            raise ConfigError("data.train is empty: give the training file, e.g. data.train=path/to/train.jsonl")
        return self


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls``."""
    return typing.get_type_hints(cls)


def _number(value: Any, kind: type, key: str) -> Any:
    """``value`` as an int or float; text may use YAML's spellings (``1e-3``, ``.inf``, ``.nan``)."""
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            loaded = yaml.safe_load(value) if value.strip() else None
            value = loaded if isinstance(loaded, (int, float)) and not isinstance(loaded, bool) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a{'' if kind is float else ' whole'} number, got {value!r}")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return int(value)
    return float(value) if kind is float else value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (from YAML, or the raw text of an override) as the field's type; anything else is an error."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        word = str(value).lower() if isinstance(value, (str, int)) else None
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation in (int, float):
        return _number(value, annotation, key)
    if annotation is str:
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be text, got {value!r} (quote it in YAML)")
        return str(value)
    if annotation is list or origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.lstrip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(value) if origin is tuple else list(value)
    if annotation is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, e.g. {{a: 1}}, got {value!r}")
        return value
    return value


def _is_type(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_type(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return annotation is Any or isinstance(annotation, typing.TypeVar) or isinstance(value, annotation)


def _alternatives(choices: tuple) -> str:
    quoted = [repr(c) for c in choices]
    return " or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _bounds(meta: typing.Mapping) -> list[tuple[str, Any, Any]]:
    tests = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
             "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}
    return [(symbol, meta[name], test) for name, (symbol, test) in tests.items() if meta.get(name) is not None]


def check_settings(obj: Any, prefix: str = "") -> Any:
    """Check every field of the settings dataclass ``obj`` (recursively): its type, its ``choices`` and its
    bounds. Raises :class:`ConfigError` naming the dotted key, the value and what is allowed; returns ``obj``."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_settings(value, key + ".")
            continue
        if not _is_type(value, hints[f.name]):
            raise ConfigError(f"{key} must be of type {getattr(hints[f.name], '__name__', hints[f.name])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if value is None:  # an optional setting left empty
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key} must be {_alternatives(choices)}, got {value!r}")
        for symbol, bound, test in _bounds(f.metadata):
            if value is not None and not (isinstance(value, float) and math.isnan(value)) and test(value, bound):
                continue
            raise ConfigError(f"{key} must be {symbol} {bound}, got {value!r}")
    return obj


def _apply(cfg: Any, data: dict, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = field_types(type(cfg))
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
            setattr(cfg, key, _coerce(value, hints[key], dotted))


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "lora.r=8"]`` -> nested dict of the raw texts (each parsed later by its field's type,
    so a path ``on`` or ``null`` stays that text)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = raw
    return nested


def read_settings_file(path: str | Path, section: str | None = None) -> dict:
    """The mapping in a YAML settings file (or its ``section``); errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (shipped examples are under configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    if section is not None:
        data = data.get(section) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"section '{section}' of {path} must be a mapping of settings")
    return data


def load_settings(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, *,
                  section: str | None = None, prefix: str = "", **values: Any) -> Any:
    """``cls`` from its defaults, then keyword ``values``, then the YAML file ``path`` (its ``section`` when
    given), then ``key=value`` overrides; every field checked (:func:`check_settings`). Errors name the key
    as ``prefix`` + key (e.g. ``uwm:sparsity``)."""
    cfg = cls(**values)
    if path:
        _apply(cfg, read_settings_file(path, section), prefix)
    return apply_overrides(cfg, overrides, prefix)


def apply_overrides(cfg: Any, overrides: list[str] | None, prefix: str = "") -> Any:
    """Apply ``key=value`` overrides to the settings object ``cfg`` in place (parsed by each field's type),
    check every field (:func:`check_settings`) and return it."""
    if overrides:
        _apply(cfg, parse_overrides(overrides), prefix)
    return check_settings(cfg, prefix)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = TrainConfig) -> Any:
    """Build a config from defaults, then a YAML file, then ``key=value`` overrides (:func:`load_settings`)."""
    return load_settings(cls, path, overrides)


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (an argparse ``type``: a bad entry is a usage error naming it)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if not s.lstrip("-").isdigit()]
    if bad:
        raise ConfigError(f"seeds must be comma-separated integers, e.g. 0,1,2; got {', '.join(map(repr, bad))}")
    return [int(s) for s in items]


def constraint_text(meta: typing.Mapping) -> str:
    """`` [one of a, b; >= 0]`` for a field's metadata, or ``""`` when it has no constraint."""
    parts = [f"one of {', '.join(map(str, meta['choices']))}"] if meta.get("choices") else []
    parts += [f"{symbol} {bound}" for symbol, bound, _ in _bounds(meta)]
    return f" [{'; '.join(parts)}]" if parts else ""


def describe_settings(cls: type | Any, prefix: str = "") -> str:
    """One line per field of the settings class ``cls`` (its defaults) or of a settings object (its values):
    ``prefix section.key (default ...): help [allowed values]``; printed by ``--help``."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} (default {value!r}): {f.metadata.get('help', '')}{constraint_text(f.metadata)}")

    walk(cls() if isinstance(cls, type) else cls, prefix)
    return "\n".join(lines)


def describe_config(cls: type = TrainConfig) -> str:
    """:func:`describe_settings` of the training config (``safeclip train --help``)."""
    return describe_settings(cls)
