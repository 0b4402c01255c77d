"""Supervised fine-tuning of the unsafe-text generator with LoRA (paper Sec. 3.1; trl ``SFTTrainer`` + peft).

Training rows are ``{"safe_text", "unsafe_text", "category"?}`` pairs (the paper curated 100, balanced over
the 20 categories); each becomes prompt = the paper's template around ``safe_text`` (naming the category when
``condition``), completion = ``unsafe_text``; the loss covers the completion only. The adapter is saved to
``OUT/adapter`` and the merged model, merged and saved in float32, to ``OUT/merged`` (the starting point of DPO
and generation; see :func:`merge_in_float32` for why not bf16).

    safeclip datagen sft --model meta-llama/Llama-2-7b-chat-hf --pairs curated.jsonl --out runs/sft \
        --lora-r 64 --batch-size 4 --lr 2e-4
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from safeclip.checkpoint import write_json_atomic
from safeclip.config import Settings, setting
from safeclip.datagen.prompts import format_prompt
from safeclip.errors import DataError, MissingFileError


@dataclass
class TrlRecipe(Settings):
    """The fields a LoRA recipe for trl's trainers has (SFT and DPO; read by :func:`trl_config`)."""

    lora_r: int = setting(8, "LoRA rank.", ge=1)
    lora_alpha: int = setting(16, "LoRA scaling alpha (paper: 16).", gt=0)
    lora_dropout: float = setting(0.05, "LoRA dropout.", ge=0.0, lt=1.0)
    target_modules: str = setting("all-linear", "Modules that get LoRA adapters (peft: \"all-linear\" or comma-separated names).")
    batch_size: int = setting(8, "Per-device batch.", ge=1)
    gradient_accumulation: int = setting(1, "Gradient accumulation steps.", ge=1)
    lr: float = setting(1e-4, "Learning rate.", gt=0.0)
    epochs: float = setting(1.0, "Passes over the pairs (ignored when max_steps > 0).", gt=0.0)
    max_steps: int = setting(-1, "Optimizer steps; -1 = use epochs.", ge=-1)
    max_length: int = setting(512, "Token limit of prompt + completion.", ge=1)
    seed: int = setting(0, "Seed of the data order and the LoRA initialisation (trl).")
    bf16: bool = setting(False, "Mixed precision in bfloat16 (GPUs).")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory (7B on one GPU).")
    extra: dict = setting({}, "More fields of trl's SFTConfig / DPOConfig.")


@dataclass
class SFTSettings(TrlRecipe):
    """LoRA SFT recipe (defaults: the paper's Llama-2-7B-chat settings)."""

    lora_r: int = setting(64, "LoRA rank (paper: 64).", ge=1)
    batch_size: int = setting(4, "Per-device batch (paper: 4).", ge=1)
    lr: float = setting(2e-4, "Learning rate (paper: 2e-4).", gt=0.0)
    epochs: float = setting(3.0, "Passes over the pairs (ignored when max_steps > 0).", gt=0.0)
    condition: bool = setting(True, "Name the pair's category in the prompt.")


def sft_rows(pairs: list[dict], *, condition: bool = True) -> list[dict]:
    """trl prompt-completion rows from ``{"safe_text", "unsafe_text", "category"}`` pairs."""
    rows = []
    for i, p in enumerate(pairs):
        if not p.get("safe_text") or not p.get("unsafe_text"):
            raise DataError(f"SFT pair {i} needs non-empty 'safe_text' and 'unsafe_text' fields, got {sorted(p)}")
        rows.append({"prompt": format_prompt(p["safe_text"], p.get("category") if condition else None),
                     "completion": " " + p["unsafe_text"].strip()})
    return rows


def lora_config(r: int, alpha: int, dropout: float, target_modules: str, model=None):
    """peft's LoraConfig for a causal LM; with ``model``, ``fan_in_fan_out`` is set where its targeted layers
    are GPT-2 style ``Conv1D`` (peft would switch it on itself, with a warning)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    targets = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    conv1d = model is not None and any(isinstance(m, Conv1D) and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)
                                       for name, m in model.named_modules())
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM",
                      fan_in_fan_out=conv1d)


def trl_config(config_cls, settings: TrlRecipe, out: Path, progress: bool, **specific):
    """trl's ``SFTConfig`` / ``DPOConfig`` from the fields the SFT and DPO recipes share, plus ``specific`` and the
    recipe's ``extra``. Activation checkpointing goes by transformers' current name where it has one (the old
    name prints a FutureWarning); loader memory is pinned only with a GPU (torch warns otherwise)."""
    import torch

    names = {f.name for f in fields(config_cls)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return config_cls(output_dir=str(out / "trainer"), per_device_train_batch_size=settings.batch_size,
                      gradient_accumulation_steps=settings.gradient_accumulation, learning_rate=settings.lr,
                      num_train_epochs=settings.epochs, max_steps=settings.max_steps, max_length=settings.max_length,
                      seed=settings.seed, bf16=settings.bf16, **{checkpointing: settings.gradient_checkpointing},
                      dataloader_pin_memory=torch.cuda.is_available(), logging_steps=10, save_strategy="no",
                      report_to="none", disable_tqdm=not progress, **specific, **settings.extra)


def _load(model: str | os.PathLike, bf16: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        lm = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.bfloat16 if bf16 else torch.float32)
    except OSError as err:
        raise MissingFileError(f"could not load causal LM {model!r}: {err}. Give a local folder or a hub name "
                                "(gated models such as Llama-2 need `huggingface-cli login`)") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def merge_in_float32(peft_model):
    """Merge the LoRA adapter into a float32 copy of the base weights (on the CPU).

    A merge in bfloat16 rounds ``W + dW`` back to ``W`` wherever ``|dW|`` is under half a bf16 step of ``W``
    (2**-9 relative): DPO at lr 5e-7 changes weights by 1e-6 to 1e-5, so a bf16 merge keeps almost none of it.
    """
    import torch

    return peft_model.to("cpu", dtype=torch.float32).merge_and_unload()


def save_trained(trainer, tokenizer, out: Path, meta: dict) -> Path:
    """Write ``out/adapter`` (LoRA only), ``out/merged`` (base + adapter, merged and saved in float32, see
    :func:`merge_in_float32`) and ``out/meta.json``."""
    trainer.model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    merged = merge_in_float32(trainer.model)
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    write_json_atomic(out / "meta.json", {**meta, "merged_dtype": "float32"})
    return out


def run_sft(model: str | os.PathLike, pairs: list[dict], out_dir: str | os.PathLike,
            settings: SFTSettings | None = None, *, progress: bool = True, return_trainer: bool = False):
    """LoRA SFT of causal LM ``model`` (name or folder) on ``pairs``; returns ``out_dir`` (or the trainer)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from safeclip.models.lora import quiet_checkpointing_alias

    settings = settings or SFTSettings()
    if not pairs:
        raise DataError("SFT needs at least one safe->unsafe pair")
    out = Path(out_dir)
    lm, tokenizer = _load(model, settings.bf16)
    args = trl_config(SFTConfig, settings, out, progress, completion_only_loss=True)
    with quiet_checkpointing_alias():
        trainer = SFTTrainer(model=lm, args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(sft_rows(pairs, condition=settings.condition)),
                             peft_config=lora_config(settings.lora_r, settings.lora_alpha, settings.lora_dropout,
                                                     settings.target_modules, lm))
    with quiet_checkpointing_alias():
        trainer.train()
    meta = {"stage": "sft", "base_model": str(model), "settings": asdict(settings), "n_pairs": len(pairs),
            "log": trainer.state.log_history}
    if return_trainer:
        return trainer
    return save_trained(trainer, tokenizer, out, meta)


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """Read SFT pairs (JSONL/CSV with safe_text, unsafe_text, optional category)."""
    from safeclip.data.quadruplets import read_rows

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"pairs file {path} not found; give a JSONL/CSV with safe_text and unsafe_text")
    rows = read_rows(path)
    sft_rows(rows)  # validates
    return rows


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    from safeclip.checkpoint import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
