"""The Safe-CLIP training loop (paper Sec. 3.2 and 4.1), readable top to bottom.

    safeclip train --config configs/tiny.yaml data.train=world/train.jsonl data.val=world/val.jsonl
    accelerate launch --num_processes 2 -m safeclip.cli train --config ...   # data parallel on 2 GPUs
    torchrun --nproc_per_node 2 -m safeclip.cli train --config ...            # on CPUs too (gloo)

Both encoders get LoRA adapters (peft); the frozen references T0 / V0 are the same encoders with
the adapters switched off, so they cannot move. Each optimizer step computes the four loss terms
of Eq. 4-7 on a batch of quadruplets (v, t, v*, t*), logs each term, validates each epoch with
the Safe-CLIP retrieval protocol, keeps the best adapters (early stopping on the recall sum), and
writes an atomic checkpoint that ``run.resume=true`` continues from exactly.

:func:`train` is a recipe of named steps, each usable alone: :func:`setup` (model, data, references,
optimizer, resume) returns a :class:`Run`; per epoch :func:`train_one_epoch` then :func:`end_epoch`
(:func:`validate_epoch`, :func:`keep_best`, :func:`save_checkpoint`); then :func:`finish`.

Run folder::

    config.yaml  meta.json  history.jsonl  train_log.jsonl  val_log.jsonl  summary.json  .lock (while running)
    checkpoints/latest -> epoch-NNNN/ or step-NNNNNNNN/ (lora.safetensors, optimizer.{safetensors,json},
                          rng-<rank>.{safetensors,json}, state.json); the newest run.keep_checkpoints are kept
    best/ (text_adapter/, vision_adapter/, metrics.json)
    best_loss/ (the same, lowest validation loss; optim.selection=loss_or_recall)

What a run folder guarantees (README, "Reliability promises"): loading it never unpickles; one writer
at a time; a resume refuses settings it cannot honour and continues bit-exactly, also mid-epoch; the
same config and seed give the same adapters; a non-finite loss or a full disk stops the run with the
last checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from safeclip.adversarial_training import add_adversarial_terms
from safeclip.checkpoint import (
    RunError,
    append_jsonl,
    cut_jsonl,
    load_state,
    preserved_rng,
    recover_folder_swaps,
    reporting_full_disk,
    restore_rng,
    rng_state,
    save_state,
    write_bytes_atomic,
    write_folder_atomic,
    write_json_atomic,
    write_text_atomic,
)
from safeclip.config import ConfigError, TrainConfig, config_to_dict
from safeclip.data import (
    EpochShuffleSampler,
    QuadrupletCollator,
    QuadrupletDataset,
    ReadReport,
    read_quadruplets,
)
from safeclip.distributed import gather_with_grad, world_size
from safeclip.eval.embed import shard_rows
from safeclip.errors import ConfigError, DataError, OutputExistsError
from safeclip.eval.evaluation import evaluate
from safeclip.losses import safe_clip_objective
from safeclip.models.clip import ClipBundle, encode_pixel_batch, encode_token_batch, load_clip
from safeclip.models.lora import add_lora, adapters_disabled, lora_config, save_adapters
from safeclip.refcache import load_or_compute_references
from safeclip.run_folder import RunLock, record_start, resume_changes

@dataclass
class TrainState:
    """Everything besides weights, optimizer and RNG that a resumed run needs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best_score: float = -math.inf
    best_epoch: int = -1
    best_loss: float = math.inf  # validation loss (optim.selection=loss_or_recall)
    best_loss_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    batches_in_epoch: int = 0  # micro-batches of epoch ``epoch`` already trained (a mid-epoch checkpoint)


# ----------------------------------------------------------------------------- setup pieces


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "accelerate": accelerate.__version__, "safeclip": __import__("safeclip").__version__,
    }


def prepare_encoders(bundle: ClipBundle, cfg: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """LoRA on the encoders being trained; every base weight frozen (these also serve as T0 / V0)."""
    settings = lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    text, vision = bundle.text, bundle.vision
    text.requires_grad_(False)
    vision.requires_grad_(False)
    if cfg.run.gradient_checkpointing:
        for encoder in (text, vision):
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.train_text:
        text = add_lora(text, settings)
    if cfg.lora.train_vision:
        vision = add_lora(vision, lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules))
    return text, vision


def trainable_parameters(*models: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in models for p in m.parameters() if p.requires_grad]


def read_split(path: str, cfg: TrainConfig) -> tuple[list, ReadReport]:
    return read_quadruplets(
        path, fmt=cfg.data.format, image_root=cfg.data.image_root or None,
        unsafe_image_root=cfg.data.unsafe_image_root or None, skip_bad_rows=cfg.data.skip_bad_rows,
        max_rows=cfg.data.max_rows,
    )


def image_cache_gib(image_processor, records, report: ReadReport) -> float:
    """Memory that keeping every preprocessed training image (float32, 3 x H x W) would take."""
    crop = getattr(image_processor, "crop_size", None) or {}
    height, width = crop.get("height", 224), crop.get("width", 224)
    images = len(records) * sum(m.endswith("image") for m in report.modalities)
    return images * 3 * height * width * 4 / 2**30


def describe_mode(report: ReadReport) -> str:
    missing = report.missing()
    if not missing:
        return "full quadruplets: all four loss terms on both modalities"
    if report.text_only:
        return "text-only mode: no images, only the text halves of Eq. 5 and Eq. 6 are trained"
    if missing == ["unsafe_image"]:
        return "text-only redirection mode: no unsafe images, so the vision halves of Eq. 4 and Eq. 5 are off"
    return "partial data: missing " + ", ".join(missing) + "; the loss halves that need them are off"


# ----------------------------------------------------------------------------- one step


def encode_batch_texts(text_model, batch: dict) -> dict[str, torch.Tensor]:
    """T(t) and T(t*) in one encoder pass over the concatenated batch: ``(B, D)`` each."""
    sides = [s for s in ("safe", "unsafe") if f"{s}_input_ids" in batch]
    ids = torch.cat([batch[f"{s}_input_ids"] for s in sides])
    mask = torch.cat([batch[f"{s}_attention_mask"] for s in sides])
    embeds = encode_token_batch(text_model, ids, mask).chunk(len(sides))
    return {f"{s}_text": e for s, e in zip(sides, embeds)}


def encode_batch_images(vision_model, batch: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """V(v) and V(v*) in one encoder pass over the concatenated batch: ``(B, D)`` each."""
    sides = [s for s in ("safe", "unsafe") if f"{s}_pixels" in batch]
    if not sides:
        return {}
    pixels = torch.cat([batch[f"{s}_pixels"] for s in sides]).to(dtype)
    embeds = encode_pixel_batch(vision_model, pixels).chunk(len(sides))
    return {f"{s}_image": e for s, e in zip(sides, embeds)}


@torch.no_grad()
def reference_embeddings(text_base, vision_base, batch: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """T0(t) and V0(v): the encoders with adapters off. No gradient ever reaches them."""
    refs = {}
    with adapters_disabled(text_base, vision_base):
        refs["safe_text_ref"] = encode_token_batch(text_base, batch["safe_input_ids"], batch["safe_attention_mask"])
        if "safe_pixels" in batch:
            refs["safe_image_ref"] = encode_pixel_batch(vision_base, batch["safe_pixels"].to(dtype))
    return refs


def backward_loss(terms: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """What to differentiate: the total, times the process count when the terms are gathered.

    A gathered term gives each process the full-batch gradient for its own items only; the
    data-parallel mean over P processes divides it by P, which this factor undoes (safeclip.distributed).
    """
    return terms["total"] * (world_size() if cfg.loss.gather_across_processes else 1)


def logged_terms(terms: dict[str, torch.Tensor], accelerator: Accelerator, cfg: TrainConfig) -> dict[str, float]:
    """The terms as floats; without gathering each process saw only its shard, so log their mean."""
    values = torch.stack([value.detach().float() for value in terms.values()])
    if accelerator.num_processes > 1 and not cfg.loss.gather_across_processes:
        values = accelerator.reduce(values, reduction="mean")
    return dict(zip(terms, values.tolist()))


def safe_clip_step_losses(text_model, vision_model, text_base, vision_base, batch: dict, cfg: TrainConfig,
                          dtype: torch.dtype, cached_refs: dict[str, torch.Tensor] | None = None,
                          image_processor=None) -> dict[str, torch.Tensor]:
    """The four Safe-CLIP terms and their weighted total for one batch (Eq. 4-7).

    ``cached_refs`` holds T0(t) / V0(v) for the whole dataset (rows = dataset index); without it
    the references are computed from the batch with the adapters switched off. With
    ``loss.adversarial.enabled`` the redirection terms on attacked unsafe inputs are added
    (:mod:`safeclip.adversarial_training`; ``image_processor`` gives its pixel space).
    """
    if cached_refs is not None:
        index = batch["index"].cpu()
        device = batch["safe_input_ids"].device
        refs = {name: value[index].to(device) for name, value in cached_refs.items()}
    else:
        refs = reference_embeddings(text_base, vision_base, batch, dtype)
    current = {**encode_batch_texts(text_model, batch), **encode_batch_images(vision_model, batch, dtype)}
    local_refs = refs
    if cfg.loss.gather_across_processes and world_size() > 1:  # every term over the global batch
        # sorted: every process must issue its collectives in the same order
        current = {name: gather_with_grad(current[name]) for name in sorted(current)}
        refs = {name: gather_with_grad(refs[name]) for name in sorted(refs)}
    terms = configured_objective(current, refs, cfg)
    if cfg.loss.adversarial.enabled:
        terms = add_adversarial_terms(terms, text_model, vision_model, text_base, vision_base, batch, local_refs, cfg,
                                      dtype, image_processor)
    return terms


def configured_objective(current: dict[str, torch.Tensor], refs: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Eq. 4-7 with the config's weights on the trained encoders' and the references' embeddings."""
    return safe_clip_objective(
        safe_text=current.get("safe_text"), unsafe_text=current.get("unsafe_text"),
        safe_image=current.get("safe_image"), unsafe_image=current.get("unsafe_image"),
        safe_text_ref=refs.get("safe_text_ref"), safe_image_ref=refs.get("safe_image_ref"),
        weights=cfg.loss.weights(), temperature=cfg.loss.temperature,
        info_nce_scale=cfg.loss.info_nce_scale, cosine_form=cfg.loss.cosine_form,
    )


class SafeClipObjective:
    """The loop's method step for Safe-CLIP (Eq. 4-7). Another objective (``safeclip.hysac.training``)
    answers the same calls: extra trainable modules (saved in every checkpoint and restored on resume),
    its optimizer, the step's loss terms, hooks around the optimizer step, validation, what it adds to
    ``best/`` and what it does once training ends."""

    name = "safe-clip"
    needs_references = True  # T0(t), V0(v): cached or computed per step

    def __init__(self, bundle: ClipBundle, cfg: TrainConfig):
        self.cfg = cfg
        self.image_processor = bundle.image_processor  # the adversarial term's pixel space

    def modules(self) -> list[torch.nn.Module]:
        return []  # trained besides the LoRA adapters

    def optimizer(self, lora_params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Paper: Adam over the LoRA parameters only."""
        return torch.optim.Adam(lora_params, lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay)

    def step_losses(self, text_model, vision_model, text_base, vision_base, batch: dict, dtype: torch.dtype,
                    cached_refs: dict | None) -> dict[str, torch.Tensor]:
        return safe_clip_step_losses(text_model, vision_model, text_base, vision_base, batch, self.cfg, dtype, cached_refs,
                                     self.image_processor)

    def before_optimizer_step(self, accelerator: Accelerator) -> None:
        pass

    def after_optimizer_step(self) -> None:
        pass

    def validate(self, text_base, vision_base, bundle: ClipBundle, records) -> tuple[float, dict]:
        return validate(text_base, vision_base, bundle, records, self.cfg)

    def write_best(self, folder: Path) -> None:
        pass

    def finish(self, run_dir: Path, val_records: list) -> None:
        pass


def make_objective(bundle: ClipBundle, cfg: TrainConfig):
    """``cfg.method``'s objective: :class:`SafeClipObjective` or HySAC's (``safeclip.hysac.training``)."""
    if cfg.method == "hysac":
        from safeclip.hysac.training import HysacObjective

        return HysacObjective(bundle, cfg)
    return SafeClipObjective(bundle, cfg)


# ----------------------------------------------------------------------------- validation


def validate(text_base, vision_base, bundle: ClipBundle, records, cfg: TrainConfig) -> tuple[float, dict]:
    """Safe-CLIP retrieval protocol on the validation split; score = sum of every recall.

    Under several processes each embeds its share of the batches (loader workers) and the shares are
    gathered, so every process gets the one-process metrics (``evaluate(shard=True)``).
    """
    model = dataclasses.replace(bundle, text=text_base, vision=vision_base)
    if world_size() > 1:
        mine = shard_rows(len(records), cfg.run.eval_batch_size, torch.distributed.get_rank(), world_size())
        print(f"validation: rank {torch.distributed.get_rank()} of {world_size()} embedded rows {mine.start}-{mine.stop} "
              f"of {len(records)}", flush=True)
    metrics = evaluate({"model": model}, records, protocols=("safe-clip",), batch_size=cfg.run.eval_batch_size,
                       skip_missing=True, num_workers=cfg.data.num_workers, shard=True).models["model"]
    score = sum(v for direction in metrics.values() for k, v in direction.items() if k.startswith("R@"))
    return float(score), metrics


@torch.no_grad()
def validation_loss(text_base, vision_base, bundle: ClipBundle, records, modalities, cfg: TrainConfig,
                    dtype: torch.dtype) -> float:
    """Mean total objective over the validation split in batches of ``data.batch_size`` (the authors' val loss).

    Every process computes it over the whole split (same weights, same number), so all agree on early stopping.
    """
    dataset = QuadrupletDataset(records, bundle.image_processor, modalities)
    loader = DataLoader(dataset, batch_size=min(cfg.data.batch_size, len(dataset)), shuffle=False, drop_last=True,
                        collate_fn=QuadrupletCollator(bundle.tokenizer, padding=cfg.data.text_padding))
    device = next(text_base.parameters()).device
    was_training = (text_base.training, vision_base.training)
    text_base.eval()
    vision_base.eval()
    totals = []
    for batch in loader:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        current = {**encode_batch_texts(text_base, batch), **encode_batch_images(vision_base, batch, dtype)}
        totals.append(configured_objective(current, reference_embeddings(text_base, vision_base, batch, dtype), cfg)["total"])
    text_base.train(was_training[0])
    vision_base.train(was_training[1])
    return float(torch.stack(totals).mean())


def select_epoch(state: TrainState, score: float, val_loss: float | None, cfg: TrainConfig) -> tuple[bool, bool]:
    """Record the epoch's validation results; returns (recall sum improved, validation loss improved).

    ``optim.selection=recall_sum``: patience counts epochs without a higher recall sum. ``loss_or_recall``
    (the authors'): it resets when either the validation loss falls or the recall sum rises.
    """
    better_recall = score > state.best_score
    better_loss = val_loss is not None and val_loss < state.best_loss
    if better_recall:
        state.best_score, state.best_epoch = score, state.epoch
    if better_loss:
        state.best_loss, state.best_loss_epoch = val_loss, state.epoch
    if better_recall or (cfg.optim.selection == "loss_or_recall" and better_loss):
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
        state.stopped_early = bool(cfg.optim.patience) and state.bad_epochs >= cfg.optim.patience
    return better_recall, better_loss


# ----------------------------------------------------------------------------- checkpoints


STATE_PREFIXES = ("text", "vision", "objective")  # the encoders, then the objective's own module (HySAC's scalars)


def lora_state(*models: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter of ``models`` (text encoder, vision encoder, objective module), prefixed."""
    if len(models) > len(STATE_PREFIXES):
        raise ValueError(f"at most {len(STATE_PREFIXES)} modules ({', '.join(STATE_PREFIXES)}), got {len(models)}")
    state = {}
    for prefix, model in zip(STATE_PREFIXES, models):
        for name, param in model.named_parameters():
            if param.requires_grad:
                state[f"{prefix}.{name}"] = param.detach().cpu().contiguous()
    return state


def load_lora_state(state: dict[str, torch.Tensor], *models: torch.nn.Module) -> None:
    """Copy a :func:`lora_state` back into ``models``; a parameter the models lack is an error."""
    missing = sorted({key.split(".", 1)[0] for key in state} - set(STATE_PREFIXES[:len(models)]))
    if missing:
        raise DataError(f"the checkpoint holds parameters of {missing} that this run does not train: "
                        "was it written with another method?")
    for prefix, model in zip(STATE_PREFIXES, models):
        params = dict(model.named_parameters())
        for key, value in state.items():
            if key.startswith(prefix + "."):
                name = key[len(prefix) + 1:]
                if name not in params:
                    raise ConfigError(f"checkpoint parameter {key} does not exist in the model: different LoRA settings?")
                with torch.no_grad():
                    params[name].copy_(value)


def checkpoint_name(state: TrainState) -> str:
    return f"step-{state.step:08d}" if state.batches_in_epoch else f"epoch-{state.epoch:04d}"


def save_checkpoint(run_dir: Path, accelerator: Accelerator, text_base, vision_base, optimizer, state: TrainState,
                    keep: int = 1, extra: tuple[torch.nn.Module, ...] = ()) -> None:
    """Write ``checkpoints/<name>`` atomically, point ``checkpoints/latest`` at it, keep the newest ``keep``.

    Every file is safetensors or JSON (nothing that runs code when loaded); each process keeps its own RNG
    stream. A full disk stops with :class:`DiskFullError` and the previous checkpoint intact. ``extra``: the
    objective's own modules (HySAC's curvature and scales), saved beside the adapters in ``lora.safetensors``.
    """
    check_finite_parameters(text_base, vision_base, state, extra)
    name = checkpoint_name(state)
    ckpt_root = run_dir / "checkpoints"
    intact = "the previous checkpoint is intact (resume with run.resume=true)"
    with reporting_full_disk(f"checkpoint {name}", ckpt_root, intact=intact):
        save_state(rng_state(), ckpt_root, f".rng-{name}-{accelerator.process_index}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            def fill(tmp: Path) -> None:
                write_bytes_atomic(tmp / "lora.safetensors", safetensors_bytes(lora_state(text_base, vision_base, *extra)))
                save_state(optimizer.state_dict(), tmp, "optimizer")
                for rank in range(accelerator.num_processes):
                    for suffix in (".json", ".safetensors"):
                        shutil.move(ckpt_root / f".rng-{name}-{rank}{suffix}", tmp / f"rng-{rank}{suffix}")
                write_json_atomic(tmp / "state.json", dataclasses.asdict(state))

            write_folder_atomic(ckpt_root / name, fill)
            write_text_atomic(ckpt_root / "latest", name + "\n")
            prune_checkpoints(ckpt_root, keep)
    accelerator.wait_for_everyone()


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest checkpoints (by optimizer step; the one ``latest`` names always stays)."""
    latest = (ckpt_root / "latest").read_text().strip()

    def step_of(folder: Path) -> int:
        try:
            return json.loads((folder / "state.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            return -1

    folders = sorted((p for p in ckpt_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: (step_of(p), p.name.startswith("epoch-")))
    for old in folders[:-keep] if keep else folders:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, accelerator: Accelerator, text_base, vision_base,
                    optimizer, extra: tuple[torch.nn.Module, ...] = ()) -> tuple[TrainState, dict] | None:
    """Weights and optimizer state from ``checkpoints/latest``; returns its TrainState and this process's RNG state.

    Reads only safetensors and JSON: a pickled file in the folder is refused, never loaded.
    """
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    ckpt = run_dir / "checkpoints" / pointer.read_text().strip()
    load_lora_state(load_file(ckpt / "lora.safetensors"), text_base, vision_base, *extra)
    optimizer.load_state_dict(load_state(ckpt, "optimizer"))
    rank_file = ckpt / f"rng-{accelerator.process_index}.json"
    # resumed on a different number of processes: continue from rank 0's stream
    rng = load_state(ckpt, rank_file.stem if rank_file.is_file() else "rng-0")
    return TrainState(**json.loads((ckpt / "state.json").read_text())), rng


def check_finite_parameters(text_base, vision_base, state: TrainState, extra: tuple[torch.nn.Module, ...] = ()) -> None:
    """Refuse to save adapters that hold inf or NaN (the last good checkpoint then stays the latest)."""
    bad = [name for name, value in lora_state(text_base, vision_base, *extra).items() if not torch.isfinite(value).all()]
    if bad:
        raise RunError(f"the adapters hold non-finite values after step {state.step} ({bad[0]} and {len(bad) - 1} "
                       "more); nothing was saved. Lower optim.lr or set optim.max_grad_norm, and resume from the last "
                       "checkpoint with run.resume=true")


def save_best(run_dir: Path, bundle: ClipBundle, text_base, vision_base, metrics: dict, state: TrainState,
              objective: SafeClipObjective | None = None, folder: str = "best") -> None:
    """The best adapters so far (toggle safety on any copy of the base model), what the objective adds
    (HySAC: ``hysac.json``), and their metrics.

    ``folder``: ``best`` (highest validation score) or ``best_loss`` (lowest validation loss, optim.selection=loss_or_recall).
    """
    extra = tuple(objective.modules()) if objective is not None else ()
    check_finite_parameters(text_base, vision_base, state, extra)

    def fill(tmp: Path) -> None:
        save_adapters(dataclasses.replace(bundle, text=text_base, vision=vision_base), tmp)
        if objective is not None:
            objective.write_best(tmp)
        write_json_atomic(tmp / "metrics.json", {"epoch": state.epoch, "score": state.best_score, "metrics": metrics,
                                                 "val_loss": state.best_loss if folder == "best_loss" else None,
                                                 "base_model": bundle.name})

    with reporting_full_disk("the best adapters", run_dir / folder, intact=f"the previous {folder}/ is intact"):
        write_folder_atomic(run_dir / folder, fill)


# ----------------------------------------------------------------------------- the recipe
# train() below reads top to bottom: setup(), then per epoch train_one_epoch() and end_epoch()
# (validate, keep the best, checkpoint), then finish(). Each step takes the Run that setup() built.


@dataclass
class Run:
    """Everything setup() builds and the recipe's steps share."""

    cfg: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    bundle: ClipBundle
    text_base: torch.nn.Module  # the peft-wrapped encoders; adapters off = the frozen T0 / V0
    vision_base: torch.nn.Module
    text_model: torch.nn.Module  # what the step calls: DDP-wrapped and/or compiled versions of the above
    vision_model: torch.nn.Module
    weight_dtype: torch.dtype
    params: list
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    train_report: ReadReport
    val_records: list
    val_report: ReadReport | None
    cached_refs: dict[str, torch.Tensor] | None
    objective: SafeClipObjective  # the method step: Safe-CLIP's Eq. 4-7, or HySAC's
    state: TrainState = dataclasses.field(default_factory=TrainState)
    resumed_rng: dict | None = None  # a mid-epoch checkpoint's RNG, restored once its epoch's batches are drawn

    def say(self, message: str) -> None:
        self.accelerator.print(message)

    @property
    def extra(self) -> tuple[torch.nn.Module, ...]:
        """The objective's own trained modules, checkpointed beside the adapters."""
        return tuple(self.objective.modules())


StepCallback = Callable[[Run, dict], None]  # called after every optimizer step with the logged terms


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # so that torchrun / accelerate launch on CPUs form a gloo group
        gradient_accumulation_steps=cfg.optim.grad_accum,
        mixed_precision=cfg.run.mixed_precision,
        log_with=cfg.run.log_with or None,
        project_dir=cfg.run.out_dir,
    )


def check_run_folder(run_dir: Path, cfg: TrainConfig) -> dict:
    """Before any work: refuse to overwrite a run, or to resume one with settings it cannot honour.

    Returns the settings a resume changes (``{key: [old, new]}``), recorded in ``history.jsonl``.
    """
    has_checkpoint = run_dir.joinpath("checkpoints", "latest").exists()
    if has_checkpoint and not cfg.run.resume:
        raise OutputExistsError(f"{run_dir} already holds a run; pass run.resume=true to continue it "
                              "or choose another run.out_dir")
    if not (has_checkpoint and (run_dir / "config.yaml").is_file()):
        return {}
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{run_dir / 'config.yaml'} is not valid YAML ({err}); cannot check the resumed settings") from err
    return resume_changes(saved, config_to_dict(cfg), defaults=config_to_dict(TrainConfig()))


def prepare_run_folder(run_dir: Path, accelerator: Accelerator) -> list[str]:
    """Finish or roll back folder replacements a kill cut short (best/, checkpoints); main process."""
    if not accelerator.is_main_process:
        return []
    return recover_folder_swaps(run_dir) + recover_folder_swaps(run_dir / "checkpoints")


def cut_logs(run_dir: Path, step: int) -> int:
    """Drop log rows after the checkpoint being resumed (a fresh start: all), so no step appears twice."""
    return sum(cut_jsonl(run_dir / name, lambda row: row.get("step", 0) <= step)
               for name in ("train_log.jsonl", "val_log.jsonl"))


def load_model(cfg: TrainConfig) -> tuple[ClipBundle, torch.nn.Module, torch.nn.Module]:
    """The CLIP bundle and its two encoders with LoRA; with the adapters off they are the frozen T0 / V0."""
    bundle = load_clip(cfg.model.name, dtype=dtype_of(cfg.model.dtype))
    for encoder in (bundle.text, bundle.vision):
        encoder.set_attn_implementation(cfg.model.attn_implementation)
    text_base, vision_base = prepare_encoders(bundle, cfg)
    return bundle, text_base, vision_base


def micro_batch_size(cfg: TrainConfig, processes: int) -> int:
    micro_batch = cfg.data.batch_size // cfg.optim.grad_accum // processes
    if micro_batch < 2 or micro_batch * cfg.optim.grad_accum * processes != cfg.data.batch_size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must split evenly into optim.grad_accum="
                         f"{cfg.optim.grad_accum} x {processes} processes with >= 2 items each")
    return micro_batch


def build_loader(cfg: TrainConfig, bundle: ClipBundle, records: list, report: ReadReport, processes: int) -> DataLoader:
    """Batches of ``micro_batch_size`` in an order fixed by (seed, epoch); images decoded once if they fit."""
    micro_batch = micro_batch_size(cfg, processes)
    cache_gib = image_cache_gib(bundle.image_processor, records, report)
    cache_images = cfg.data.num_workers == 0 and cache_gib <= cfg.data.image_cache_gb  # decode once, if it fits
    dataset = QuadrupletDataset(records, bundle.image_processor, report.modalities, cache_images=cache_images)
    sampler = EpochShuffleSampler(len(dataset), seed=cfg.run.seed)
    loader = DataLoader(dataset, batch_size=micro_batch, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                        pin_memory=torch.cuda.is_available(),
                        collate_fn=QuadrupletCollator(bundle.tokenizer, padding=cfg.data.text_padding))
    if len(loader) == 0:
        raise DataError(f"{cfg.data.train} has {len(dataset)} usable quadruplets, fewer than one batch "
                         f"({micro_batch}); lower data.batch_size")
    return loader


def build_references(cfg: TrainConfig, accelerator: Accelerator, run_dir: Path, bundle: ClipBundle, text_base,
                     vision_base, records: list, report: ReadReport) -> dict[str, torch.Tensor] | None:
    """Frozen references T0(t), V0(v): computed once per model and dataset (exact), or None (per step).

    Called after the encoders are on the accelerator: every process embeds its share of the batches with
    loader workers, in the step's precision (autocast), and the shares are gathered (refcache.py).
    """
    if not cfg.data.cache_references:
        return None
    cache_dir = cfg.data.reference_cache_dir or str(run_dir / "reference_cache")
    # computing the cache iterates a DataLoader, which draws from the global generators; reading it does not:
    # without the fork the same seed would train differently depending on whether the cache existed
    with preserved_rng():
        return load_or_compute_references(
            text_base, vision_base, bundle.tokenizer, bundle.image_processor, records,
            report.modalities, cache_dir, batch_size=cfg.run.eval_batch_size,
            progress=cfg.run.progress and accelerator.is_local_main_process, num_workers=cfg.data.num_workers,
            shard=True, autocast=accelerator.autocast, precision=accelerator.mixed_precision)


def write_run_files(run: Run, changes: dict) -> None:
    """Logs cut back to the resumed step, history.jsonl, config.yaml and meta.json (main process); trackers."""
    if run.accelerator.is_main_process:
        with reporting_full_disk("the run's config and logs", run.run_dir):
            write_run_records(run, changes)
    if run.cfg.run.log_with:
        run.accelerator.init_trackers("safeclip", config=config_to_dict(run.cfg))


def write_run_records(run: Run, changes: dict) -> None:
    cfg, report, val_report = run.cfg, run.train_report, run.val_report
    run.run_dir.mkdir(parents=True, exist_ok=True)
    dropped = cut_logs(run.run_dir, run.state.step)
    if dropped:
        run.say(f"dropped {dropped} log rows written after step {run.state.step} (the resumed checkpoint)")
    record_start(run.run_dir, step=run.state.step, resumed=run.state.step > 0, changes=changes)
    write_text_atomic(run.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    write_json_atomic(run.run_dir / "meta.json", {
        "seed": cfg.run.seed, "versions": versions(), "command": sys.argv, "processes": run.accelerator.num_processes,
        "model_path": str(Path(cfg.model.name).resolve()) if Path(cfg.model.name).exists() else cfg.model.name,
        "train_rows": report.rows, "train_skipped_rows": len(report.skipped),
        "val_rows": val_report.rows if val_report else 0,
        "val_skipped_rows": len(val_report.skipped) if val_report else 0,
        "mode": describe_mode(report), "modalities": list(report.modalities),
    })


def setup(cfg: TrainConfig, lock: RunLock | None = None) -> Run:
    """Validate, seed, load the model and data, build the optimizer, and resume or start the run folder.

    ``lock`` (taken by :func:`train` on the main process) is acquired here, before anything is written.
    """
    cfg.validate()
    run_dir = Path(cfg.run.out_dir)
    changes = check_run_folder(run_dir, cfg)
    accelerator = make_accelerator(cfg)
    if lock is not None and accelerator.is_main_process:
        lock.acquire()
        if lock.note:
            accelerator.print(lock.note)
    for done in prepare_run_folder(run_dir, accelerator):
        accelerator.print(done)
    set_seed(cfg.run.seed)
    bundle, text_base, vision_base = load_model(cfg)

    train_records, train_report = read_split(cfg.data.train, cfg)
    accelerator.print(train_report.summary())
    accelerator.print("mode: " + describe_mode(train_report))
    val_records, val_report = (read_split(cfg.data.val, cfg) if cfg.data.val else ([], None))
    if val_report:
        accelerator.print(val_report.summary())
    loader = build_loader(cfg, bundle, train_records, train_report, accelerator.num_processes)

    # The method step, and the optimizer over the LoRA parameters and the objective's own (HySAC's scalars).
    objective = make_objective(bundle, cfg)
    for module in objective.modules():
        module.to(accelerator.device)
    optimizer = objective.optimizer(trainable_parameters(text_base, vision_base))
    params = trainable_parameters(text_base, vision_base, *objective.modules())
    optimizer, loader = accelerator.prepare(optimizer, loader)
    # DDP wraps only encoders that train; a frozen encoder is used as it is.
    text_model = accelerator.prepare(text_base) if trainable_parameters(text_base) else text_base
    vision_model = accelerator.prepare(vision_base) if trainable_parameters(vision_base) else vision_base
    for encoder in (text_base, vision_base):  # a frozen encoder is not prepared, so move it here
        encoder.to(accelerator.device)
    # On the accelerator now: the references are built there, each process embedding its share.
    cached_refs = (build_references(cfg, accelerator, run_dir, bundle, text_base, vision_base, train_records, train_report)
                   if objective.needs_references else None)
    if cfg.run.compile:
        text_model, vision_model = torch.compile(text_model), torch.compile(vision_model)

    run = Run(cfg=cfg, accelerator=accelerator, run_dir=run_dir, bundle=bundle, text_base=text_base,
              vision_base=vision_base, text_model=text_model, vision_model=vision_model,
              weight_dtype=dtype_of(cfg.model.dtype), params=params, optimizer=optimizer, loader=loader,
              train_report=train_report, val_records=val_records, val_report=val_report, cached_refs=cached_refs,
              objective=objective)
    if cfg.run.resume:
        resume(run)
    write_run_files(run, changes)
    return run


def resume(run: Run) -> None:
    """Load the latest checkpoint into the run; its RNG is restored now (epoch end) or once its epoch's batches
    are drawn (mid-epoch, so that the draw the loader makes at the epoch's start is not made twice)."""
    loaded = load_checkpoint(run.run_dir, run.accelerator, run.text_base, run.vision_base, run.optimizer, run.extra)
    if loaded is None:
        run.say("nothing to resume; starting")
        return
    run.state, rng = loaded
    if run.state.batches_in_epoch:
        run.resumed_rng = rng
    else:
        restore_rng(rng)
    where = f", {run.state.batches_in_epoch} batches into epoch {run.state.epoch + 1}" if run.state.batches_in_epoch else ""
    run.say(f"resumed from epoch {run.state.epoch}, step {run.state.step}{where}")


def epochs_to_run(run: Run):
    """The epochs left: from the resumed one to optim.epochs, until early stopping or optim.max_steps."""
    cfg = run.cfg
    for epoch in range(run.state.epoch, cfg.optim.epochs):
        if run.state.stopped_early or (cfg.optim.max_steps and run.state.step >= cfg.optim.max_steps):
            return
        yield epoch


def check_finite_loss(run: Run, terms: dict[str, torch.Tensor]) -> None:
    """Stop before a non-finite loss reaches the weights; the last checkpoint on disk stays the latest."""
    if not torch.isfinite(terms["total"].detach()).item():
        bad = [name for name, value in terms.items() if not torch.isfinite(value.detach()).item()]
        latest = run.run_dir / "checkpoints" / "latest"
        last = latest.read_text().strip() if latest.is_file() else "none yet"
        raise RunError(f"the loss is {terms['total'].item()} at step {run.state.step + 1} (epoch {run.state.epoch + 1}; "
                       f"non-finite terms: {', '.join(bad)}); training stopped. The last good checkpoint ({last}) is "
                       "intact: lower optim.lr or set optim.max_grad_norm, then start again")


def optimizer_step(run: Run, batch: dict) -> dict[str, torch.Tensor]:
    """One micro-batch: the objective's terms, backward, and (on the last micro-batch) clip + optimizer step;
    the objective's hooks run around the step (HySAC: scalar gradients averaged, clamps after)."""
    accelerator, cfg, objective = run.accelerator, run.cfg, run.objective
    with accelerator.accumulate(run.text_model, run.vision_model):
        with accelerator.autocast():
            terms = objective.step_losses(run.text_model, run.vision_model, run.text_base, run.vision_base, batch,
                                          run.weight_dtype, run.cached_refs)
        check_finite_loss(run, terms)
        accelerator.backward(backward_loss(terms, cfg))
        if accelerator.sync_gradients:
            objective.before_optimizer_step(accelerator)
        if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.params, cfg.optim.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
        if accelerator.sync_gradients:
            objective.after_optimizer_step()
    return terms


def log_step(run: Run, epoch: int, logged: dict[str, float]) -> None:
    cfg = run.cfg
    if run.accelerator.is_main_process and (run.state.step % cfg.run.log_every == 0 or run.state.step == 1):
        append_jsonl(run.run_dir / "train_log.jsonl", {"epoch": epoch, "step": run.state.step, **logged})
        if cfg.run.log_with:
            run.accelerator.log(logged, step=run.state.step)


def epoch_batches(run: Run, epoch: int):
    """The epoch's batches, from where a mid-epoch checkpoint left off; then its RNG is put back."""
    run.loader.set_epoch(epoch)  # accelerate's loader passes it on to our sampler
    done = run.state.batches_in_epoch
    loader = run.accelerator.skip_first_batches(run.loader, done) if done else run.loader
    batches = iter(loader)
    if run.resumed_rng is not None:
        # a loader draws its base seed from the global generator when it starts (at the first batch), as the
        # checkpointed run did at the epoch's start: start it, then put the checkpoint's RNG back
        batches = itertools.chain([next(batches)], batches)
        restore_rng(run.resumed_rng)
        run.resumed_rng = None
    return batches, len(run.loader) - done


def train_one_epoch(run: Run, epoch: int, on_step: StepCallback | None = None) -> None:
    """Every batch of ``epoch`` (or up to optim.max_steps); ``on_step(run, logged)`` after each optimizer step.

    With ``run.checkpoint_every_steps`` a checkpoint is written every N steps inside the epoch.
    """
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    run.text_model.train()
    run.vision_model.train()
    batches, left = epoch_batches(run, epoch)
    bar = tqdm(batches, total=left, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=not (cfg.run.progress and accelerator.is_local_main_process))
    for batch in bar:
        terms = optimizer_step(run, batch)
        state.batches_in_epoch += 1
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        logged = logged_terms(terms, accelerator, cfg)
        bar.set_postfix(loss=f"{logged['total']:.4f}")
        log_step(run, epoch, logged)
        if (cfg.run.checkpoint_every_steps and state.step % cfg.run.checkpoint_every_steps == 0
                and state.batches_in_epoch < len(run.loader)):  # the epoch's end checkpoints anyway
            save_checkpoint(run.run_dir, accelerator, run.text_base, run.vision_base, run.optimizer, state,
                            cfg.run.keep_checkpoints, run.extra)
        if on_step is not None:
            on_step(run, logged)
        if cfg.optim.max_steps and state.step >= cfg.optim.max_steps:
            break
    state.epoch, state.batches_in_epoch = epoch + 1, 0


def validate_epoch(run: Run) -> tuple[float, dict]:
    """The validation score (recall sum) and metrics of the current adapters; (0, {}) without a val split."""
    if not run.val_records:
        return 0.0, {}
    return run.objective.validate(run.text_base, run.vision_base, run.bundle, run.val_records)


def epoch_validation_loss(run: Run) -> float | None:
    """The validation loss of the current adapters under ``optim.selection=loss_or_recall``; else None."""
    if not run.val_records or run.cfg.optim.selection != "loss_or_recall":
        return None
    return validation_loss(run.text_base, run.vision_base, run.bundle, run.val_records, run.val_report.modalities,
                           run.cfg, run.weight_dtype)


def keep_best(run: Run, score: float, metrics: dict, val_loss: float | None = None) -> bool:
    """Update the early-stopping state; save ``best/`` when the score improved (always without a val split),
    and ``best_loss/`` when ``val_loss`` (optim.selection=loss_or_recall) fell."""
    state = run.state
    if run.val_records:
        improved, loss_improved = select_epoch(state, score, val_loss, run.cfg)
    else:
        improved, loss_improved = True, False
        state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
    if run.accelerator.is_main_process:
        losses = {"val_loss": val_loss, "loss_improved": loss_improved} if val_loss is not None else {}
        append_jsonl(run.run_dir / "val_log.jsonl", {"epoch": state.epoch, "step": state.step, "score": score,
                                                     "improved": improved, "metrics": metrics, **losses})
        if improved:
            save_best(run.run_dir, run.bundle, run.text_base, run.vision_base, metrics, state, run.objective)
        if loss_improved:
            save_best(run.run_dir, run.bundle, run.text_base, run.vision_base, metrics, state, run.objective,
                      folder="best_loss")
        run.say(f"epoch {state.epoch}: val recall sum {score:.1f} (best {state.best_score:.1f} at epoch {state.best_epoch})"
                + (f", val loss {val_loss:.4f} (best {state.best_loss:.4f} at epoch {state.best_loss_epoch})"
                   if val_loss is not None else ""))
    return improved


def end_epoch(run: Run) -> None:
    """Validate (recall sum; and the validation loss under optim.selection=loss_or_recall), keep the best
    adapters, and checkpoint."""
    score, metrics = validate_epoch(run)
    keep_best(run, score, metrics, epoch_validation_loss(run))
    save_checkpoint(run.run_dir, run.accelerator, run.text_base, run.vision_base, run.optimizer, run.state,
                    run.cfg.run.keep_checkpoints, run.extra)


def finish(run: Run) -> Path:
    """What the objective does once training ends (HySAC: the safety bounds of the best model), then summary.json."""
    if run.accelerator.is_main_process:
        run.objective.finish(run.run_dir, run.val_records)
        write_json_atomic(run.run_dir / "summary.json", {**dataclasses.asdict(run.state),
                                                         "best_dir": str(run.run_dir / "best")})
    run.accelerator.end_training()
    return run.run_dir


def train(cfg: TrainConfig, on_step: StepCallback | None = None) -> Path:
    """Fine-tune ``cfg.model.name`` with Safe-CLIP; returns the run folder.

    ``on_step(run, logged_terms)`` is called after every optimizer step (progress reporting, tests that
    stop a run at a chosen step).
    """
    lock = RunLock(cfg.run.out_dir)  # held from setup() to the end, also when training fails
    try:
        run = setup(cfg, lock)
        for epoch in epochs_to_run(run):
            train_one_epoch(run, epoch, on_step)
            end_epoch(run)
        return finish(run)
    finally:
        lock.release()
