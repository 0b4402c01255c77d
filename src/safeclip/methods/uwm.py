"""``uwm``: Unsafe Weights Manipulation (training-free) as a reversible weight edit.

    from safeclip.methods import MethodInputs, get_method
    bundle = get_method("uwm")(MethodInputs(base="demo/base", train="w/train.jsonl", out_dir="m/uwm"))
    # or by hand:
    scores = calibrate(bundle, records, UwmConfig())     # {"text.<module>": (d_out, d_in) score, ...}
    edit = select_edit(bundle, scores, UwmConfig())      # which weights, and their original values
    edit.apply(bundle); edit.undo(bundle)                # undo restores the exact (bit-identical) weights

Steps (D'Incà et al., "Safe Vision-Language Models via Unsafe Weights Manipulation", 2025; the authors' code
is github.com/Moreno98/UWM):

1. Calibration on (safe, unsafe) pairs of the training data (paper: ~8k ViSU tuples; here the budget's
   ``calibration_rows``): texts t / t* through the text encoder, images v / v* through the vision encoder.
2. Forward hooks capture the input X ``(B, L, d_in)`` of every text attention ``out_proj`` and every vision
   MLP ``fc2``. Per sample: n_j = L2 norm of X[:, j] over the valid tokens (text: attention mask; vision:
   every token) and s_j = its standard deviation over those tokens.
3. Saliency of W ``(d_out, d_in)`` for one sample: with A_ij = n_j |W_ij|, the output saliency
   o_i = mean_j A_ij and the input saliency u_j = mean_i A_ij; S_ij = o_i u_j / s_j.
4. Score = mean over the calibration pairs of S(unsafe) / S(safe), computed pair by pair (sample i of
   the unsafe half against sample i of the safe half); on the text side it is also multiplied by |W|.
   The ratio factorises, so the batch mean is one ``(d_out, d_in)`` matrix product, no per-sample tensor.
5. Adaptive selection, per layer: normalise the scores to sum 1, sort ascending, cumulative sum; every
   weight past ``sparsity`` (0.98: the top 2% of the score mass) is selected.
6. The selected weights are multiplied by ``alpha`` (-1: negation, UWM; 0: the pruning baseline).

Per-category edits (``categories``; the authors' code keeps one mask per concept and applies their union, or
one concept's mask): ``categories=each`` scores and selects on each category's calibration pairs separately
and negates the union of the selections; ``categories=blood,weapons`` does the same for the named categories
only, so a user can remove some concepts and keep the others. The default (empty) is one selection from all
pairs, the paper's ViSU setting.

The edit keeps each selected weight's flat index and original value (``edit.safetensors``), so
:meth:`WeightEdit.undo` writes the exact original numbers back, and :meth:`WeightEdit.apply` refuses a
base model whose weights differ from the ones calibrated. Output: ``out_dir/edit.safetensors``,
``out_dir/uwm.json`` (config, per-layer counts, and the key of every input the edit depends on: settings, seed,
``calibration_rows``, the training file's and the base weights' sha256); a rerun with the same key loads the
edit instead of calibrating again, and one with another key is refused, naming what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from safeclip.checkpoint import write_json_atomic
from safeclip.config import Settings, load_settings, setting
from safeclip.data import read_quadruplets
from safeclip.data.loader import QuadrupletCollator, QuadrupletDataset
from safeclip.data.quadruplets import MODALITIES
from safeclip.errors import ConfigError, DataError, MissingFileError
from safeclip.methods.base import MethodInputs
from safeclip.models.clip import ClipBundle, load_clip

EPS = 1e-8
RUN_ONLY = ("batch_size", "num_workers", "device")  # UwmConfig fields that do not change the edit


@dataclass
class UwmConfig(Settings):
    """UWM settings (``key=value`` overrides in ``MethodInputs.overrides``)."""

    sparsity: float = setting(0.98, "Select the weights past this cumulative share of the score mass (paper: 0.98).", gt=0.0, lt=1.0)
    alpha: float = setting(-1.0, "Selected weights are multiplied by alpha: -1 negation (UWM), 0 pruning.")
    text_layers: str = setting("out_proj", "Text-encoder Linear names whose inputs are scored (comma-separated).")
    vision_layers: str = setting("fc2", "Vision-encoder Linear names whose inputs are scored (comma-separated).")
    edit_text: bool = setting(True, "Edit the text encoder.")
    edit_vision: bool = setting(True, "Edit the vision encoder.")
    categories: str = setting("", "'': one selection from all calibration pairs (paper); 'each': one per category, their union is edited; 'cat1,cat2': the union of these categories' selections only (names as in the rows' 'category').")
    batch_size: int = setting(64, "Calibration pairs per forward pass.", ge=1)
    num_workers: int = setting(0, "DataLoader worker processes decoding calibration images (real data: 8).", ge=0)
    device: str = setting("", "'cpu', 'cuda', ...; empty: cuda when available.")

    def validate(self) -> UwmConfig:
        """The rule that ties fields together (each field is checked on construction)."""
        if not (self.edit_text or self.edit_vision):
            raise ConfigError("uwm: at least one of edit_text / edit_vision must be true")
        return self


# ----------------------------------------------------------------------------- scoring


def token_statistics(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-input-dim L2 norm and std over valid tokens: ``x (B, L, d)`` -> two ``(B, d)``."""
    x = x.float()
    if mask is None:
        return x.norm(dim=1), x.std(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    count = m.sum(1).clamp(min=1)  # (B, 1)
    norm = (x.pow(2) * m).sum(1).sqrt()
    mean = (x * m).sum(1) / count
    var = ((x - mean.unsqueeze(1)).pow(2) * m).sum(1) / (count - 1).clamp(min=1)
    return norm, var.sqrt()


def saliency_factors(weight_abs: torch.Tensor, norm: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of S_ij = o_i * u_j / s_j for each sample: ``(B, d_out)`` and ``(B, d_in)``.

    A_ij = n_j |W_ij|; o_i = mean_j A_ij = (n @ |W|^T)_i / d_in; u_j = n_j mean_i |W_ij|.
    """
    out_sal = norm @ weight_abs.T / weight_abs.shape[1]  # (B, d_out)
    in_sal = norm * weight_abs.mean(0)  # (B, d_in)
    return out_sal, in_sal / (std + EPS)


def pair_score(weight: torch.Tensor, safe: tuple[torch.Tensor, torch.Tensor], unsafe: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Sum over pairs b of S_b(unsafe) / S_b(safe): ``(d_out, d_in)``; ``safe``/``unsafe`` = (norm, std) ``(B, d_in)``."""
    w = weight.detach().float().abs()
    o_s, u_s = saliency_factors(w, *safe)
    o_u, u_u = saliency_factors(w, *unsafe)
    return (o_u / (o_s + EPS)).T @ (u_u / (u_s + EPS))  # sum_b outer(o ratio, u ratio)


def named_linears(encoder: torch.nn.Module, names: str) -> dict[str, torch.nn.Linear]:
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    found = {name: mod for name, mod in encoder.named_modules()
             if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted}
    if not found:
        raise ConfigError(f"no Linear layers named {sorted(wanted)} in {type(encoder).__name__}; "
                         "check uwm text_layers / vision_layers")
    return found


def scored_layers(bundle: ClipBundle, cfg: UwmConfig) -> dict[str, torch.nn.Linear]:
    """The Linear layers UWM scores and edits, keyed ``"text.<module>"`` / ``"vision.<module>"``."""
    layers = {f"text.{n}": m for n, m in named_linears(bundle.text, cfg.text_layers).items()} if cfg.edit_text else {}
    if cfg.edit_vision:
        layers |= {f"vision.{n}": m for n, m in named_linears(bundle.vision, cfg.vision_layers).items()}
    return layers


@contextlib.contextmanager
def capture_statistics(layers: dict[str, torch.nn.Linear], mask: torch.Tensor | None):
    """Record each layer's input statistics (:func:`token_statistics`, two ``(B, d_in)``) in the yielded dict.

    The statistics are taken inside the hook, so a forward pass keeps two ``(B, d_in)`` tensors per layer
    rather than every layer's ``(B, L, d_in)`` input (ViT-L/14's 24 ``fc2`` inputs at batch 64 are ~6 GB).
    """
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str, inputs: tuple) -> None:
        seen[name] = token_statistics(inputs[0].detach(), mask)

    handles = [mod.register_forward_hook(lambda m, inp, out, name=name: record(name, inp)) for name, mod in layers.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def calibrate(bundle: ClipBundle, records, cfg: UwmConfig, *, progress: bool = False) -> dict[str, torch.Tensor]:
    """Scores ``{"text.<module>" | "vision.<module>": (d_out, d_in)}`` from (safe, unsafe) pairs of ``records``."""
    sides = [s for s, on in (("text", cfg.edit_text), ("vision", cfg.edit_vision)) if on]
    layers = scored_layers(bundle, cfg)
    by_side = {side: {k: m for k, m in layers.items() if k.startswith(f"{side}.")} for side in sides}
    modalities = [m for m in MODALITIES if (m.endswith("text") and cfg.edit_text) or (m.endswith("image") and cfg.edit_vision)]
    dataset = QuadrupletDataset(records, bundle.image_processor, modalities)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=QuadrupletCollator(bundle.tokenizer),
                        num_workers=cfg.num_workers)
    sums = {key: torch.zeros_like(mod.weight, dtype=torch.float32) for key, mod in layers.items()}
    count = 0
    device = next(bundle.text.parameters()).device
    bundle.text.eval()
    bundle.vision.eval()
    for batch in tqdm(loader, desc="uwm calibration", disable=not progress):
        batch = {k: v.to(device) for k, v in batch.items()}
        for side in sides:
            stats = {}
            for half in ("safe", "unsafe"):
                mask = batch[f"{half}_attention_mask"] if side == "text" else None
                with capture_statistics(by_side[side], mask) as stats[half]:
                    if side == "text":
                        bundle.text(input_ids=batch[f"{half}_input_ids"], attention_mask=mask)
                    else:
                        bundle.vision(pixel_values=batch[f"{half}_pixels"])
            for key, mod in by_side[side].items():
                sums[key] += pair_score(mod.weight, stats["safe"][key], stats["unsafe"][key])
        count += len(batch["index"])
    scores = {}
    for key, total in sums.items():
        score = total / max(count, 1)
        if key.startswith("text."):  # the text side also weighs by |W| (the authors' text scorer)
            score = score * layers[key].weight.detach().float().abs()
        scores[key] = score
    return scores


def select_by_mass(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Flat indices of the weights past ``sparsity`` of the cumulative (ascending) normalised score mass."""
    flat = score.flatten().double()
    total = flat.sum()
    if not torch.isfinite(total) or total <= 0:
        raise DataError("uwm scores must be finite and positive; the calibration data may be degenerate")
    values, order = torch.sort(flat / total)
    return order[torch.cumsum(values, 0) > sparsity].sort().values


# ----------------------------------------------------------------------------- the edit


def _module(bundle: ClipBundle, key: str) -> torch.nn.Linear:
    side, name = key.split(".", 1)
    return (bundle.text if side == "text" else bundle.vision).get_submodule(name)


@dataclass
class WeightEdit:
    """Selected weights per layer (flat indices), their original values and the factor applied."""

    index: dict[str, torch.Tensor]
    original: dict[str, torch.Tensor]
    alpha: float = -1.0
    applied: bool = field(default=False, compare=False)

    @torch.no_grad()
    def apply(self, bundle: ClipBundle) -> ClipBundle:
        """Multiply the selected weights by ``alpha`` in place; the base must hold the calibrated values."""
        if self.applied:
            raise ValueError("this UWM edit is already applied; undo it first")
        for key, idx in self.index.items():
            flat = _module(bundle, key).weight.view(-1)
            idx, original = idx.to(flat.device), self.original[key].to(flat.device, flat.dtype)
            if not torch.equal(flat[idx], original):
                raise DataError(f"UWM edit of {key} was computed for other weights: load the base model it was "
                                 "calibrated on (or rerun the calibration)")
            flat[idx] = original * self.alpha
        self.applied = True
        return bundle

    @torch.no_grad()
    def undo(self, bundle: ClipBundle) -> ClipBundle:
        """Write the original values back (bit-exact)."""
        if not self.applied:
            raise ValueError("this UWM edit is not applied; nothing to undo")
        for key, idx in self.index.items():
            flat = _module(bundle, key).weight.view(-1)
            flat[idx.to(flat.device)] = self.original[key].to(flat.device, flat.dtype)
        self.applied = False
        return bundle

    def counts(self) -> dict[str, int]:
        return {k: int(v.numel()) for k, v in self.index.items()}

    def save(self, path: str | Path) -> Path:
        tensors = {f"{k}::index": v.contiguous().cpu() for k, v in self.index.items()}
        tensors.update({f"{k}::original": v.contiguous().cpu() for k, v in self.original.items()})
        save_file(tensors, str(path), metadata={"alpha": repr(self.alpha)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> WeightEdit:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"UWM edit {path} does not exist; run the uwm method to create it")
        with safe_open(str(path), "pt") as f:
            alpha = float(f.metadata()["alpha"])
        tensors = load_file(str(path))
        keys = sorted({k.split("::")[0] for k in tensors})
        return cls({k: tensors[f"{k}::index"] for k in keys}, {k: tensors[f"{k}::original"] for k in keys}, alpha)


def select_edit(bundle: ClipBundle, scores: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
                cfg: UwmConfig) -> WeightEdit:
    """The per-layer adaptive selection of :func:`select_by_mass` as a (not yet applied) :class:`WeightEdit`.

    ``scores`` may be a list (one score set per category): each is selected on its own and the edit holds
    the union of the selected weights.
    """
    score_sets = scores if isinstance(scores, list) else [scores]
    index = {key: torch.cat([select_by_mass(s[key], cfg.sparsity) for s in score_sets]).unique(sorted=True)
             for key in score_sets[0]}
    return weight_edit(bundle, index, cfg.alpha)


def weight_edit(bundle: ClipBundle, index: dict[str, torch.Tensor], alpha: float) -> WeightEdit:
    """A (not yet applied) edit of the weights at ``index`` (flat, per ``"text.<module>"`` key), keeping their values."""
    return WeightEdit(index, {k: _module(bundle, k).weight.detach().view(-1)[i].clone() for k, i in index.items()}, alpha)


def category_groups(records: list, categories: str) -> dict[str, list]:
    """Calibration pairs per selection: ``{"all": records}`` or ``{category: its records}`` (``categories``)."""
    if not categories:
        return {"all": list(records)}
    by_category: dict[str, list] = {}
    for record in records:
        by_category.setdefault(record.category, []).append(record)
    if "" in by_category:
        raise DataError(f"uwm categories={categories!r} needs a category on every calibration row; "
                         f"{len(by_category[''])} rows have none (add a 'category' column or leave categories empty)")
    wanted = sorted(by_category) if categories == "each" else [c.strip() for c in categories.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in by_category]
    if unknown:
        raise ConfigError(f"uwm categories: no calibration pairs of {', '.join(map(repr, unknown))}; the calibration "
                         f"rows hold {', '.join(sorted(by_category))} (or use categories=each)")
    return {c: by_category[c] for c in wanted}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(bundle: ClipBundle) -> str:
    """sha256 of every weight of both encoders (names, dtypes and values)."""
    digest = hashlib.sha256()
    for prefix, encoder in (("text", bundle.text), ("vision", bundle.vision)):
        for name, value in sorted(encoder.state_dict().items()):
            digest.update(f"{prefix}.{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reuse_key(inputs: MethodInputs, cfg: UwmConfig, bundle: ClipBundle) -> dict:
    """Everything a saved edit depends on: the edit settings, the calibration draw (seed, calibration_rows),
    the training file's bytes and the base model's weights (``uwm.json`` "key")."""
    return {"settings": {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}, "seed": inputs.seed,
            "calibration_rows": inputs.budget.calibration_rows, "train_sha256": file_sha256(inputs.train),
            "base_sha256": weights_sha256(bundle)}


def check_saved_edit(out: Path, key: dict) -> None:
    """Raise ValueError when the edit saved in ``out`` was made from other inputs than ``key`` (naming them)."""
    saved = uwm_summary(out).get("key")
    if saved is None:
        raise ConfigError(f"{out} holds a UWM edit without a record of its inputs (an older version wrote it); "
                         "delete the folder to calibrate again, or use another output folder")
    changed = [f"settings.{k}" for k, v in key["settings"].items() if saved["settings"].get(k) != v]
    changed += [k for k, v in key.items() if k != "settings" and saved.get(k) != v]
    if changed:
        raise ConfigError(f"{out} holds a UWM edit made from other inputs ({', '.join(changed)}); "
                         "delete the folder to calibrate again, or use another output folder")


def run_uwm(inputs: MethodInputs) -> ClipBundle:
    """Calibrate on the training pairs, select and apply the edit (or reuse a saved one); returns the bundle.

    A saved edit is reused only when every input it depends on (:func:`reuse_key`) is the same.
    """
    cfg = load_settings(UwmConfig, overrides=inputs.overrides, prefix="uwm:").validate()
    out = inputs.out
    bundle = load_clip(inputs.base)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bundle.text.to(device)
    bundle.vision.to(device)
    edit_path = out / "edit.safetensors"
    if (out / "uwm.json").is_file() and edit_path.is_file():
        check_saved_edit(out, reuse_key(inputs, cfg, bundle))
        return WeightEdit.load(edit_path).apply(bundle)
    started = time.perf_counter()
    records, report = read_quadruplets(Path(inputs.train))
    missing = [m for m in MODALITIES if m not in report.modalities]
    if missing:
        raise DataError(f"uwm calibration needs (safe, unsafe) pairs of both modalities in {inputs.train}; "
                         f"missing: {', '.join(missing)}")
    key = reuse_key(inputs, cfg, bundle)
    rows = inputs.budget.calibration_rows
    if rows and rows < len(records):
        records = random.Random(inputs.seed).sample(records, rows)
    groups = category_groups(records, cfg.categories)
    score_sets = [calibrate(bundle, group, cfg, progress=inputs.progress) for group in groups.values()]
    edit = select_edit(bundle, score_sets, cfg)
    out.mkdir(parents=True, exist_ok=True)
    edit.save(edit_path)
    edit.apply(bundle)
    counts = edit.counts()
    sizes = {k: int(v.numel()) for k, v in score_sets[0].items()}
    write_json_atomic(out / "uwm.json", {"config": asdict(cfg), "calibration_pairs": len(records), "seed": inputs.seed,
                                         "selections": {name: len(group) for name, group in groups.items()},
                                         "base": str(inputs.base), "selected": counts,
                                         "selected_share": {k: counts[k] / sizes[k] for k in counts},
                                         "seconds": time.perf_counter() - started, "key": key})
    return bundle


def uwm_summary(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "uwm.json").read_text())
