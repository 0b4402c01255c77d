"""DPO of the SFT generator on automatically ranked pairs (paper Sec. 3.1 and supplementary; trl ``DPOTrainer``).

A fresh LoRA adapter (paper: r=8, alpha=16, beta=0.1, batch 16, lr 5e-7) is trained on top of the merged SFT
model; the reference policy is that same model with the adapter disabled (peft), so no second copy is kept.
Writes ``OUT/adapter`` and ``OUT/merged`` like SFT.

    safeclip datagen dpo --model runs/sft/merged --pairs runs/prefs/preferences.jsonl --out runs/dpo
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from safeclip.config import setting
from safeclip.datagen.sft import TrlRecipe, _load, lora_config, save_trained, trl_config
from safeclip.errors import DataError


@dataclass
class DPOSettings(TrlRecipe):
    """LoRA DPO recipe (defaults: the paper's supplementary settings)."""

    beta: float = setting(0.1, "DPO temperature beta (paper: 0.1).", gt=0.0)
    lora_r: int = setting(8, "LoRA rank (paper: 8).", ge=1)
    batch_size: int = setting(16, "Per-device batch (paper: 16).", ge=1)
    lr: float = setting(5e-7, "Learning rate (paper: 5e-7).", gt=0.0)


def run_dpo(model: str | os.PathLike, pairs: list[dict], out_dir: str | os.PathLike,
            settings: DPOSettings | None = None, *, progress: bool = True, return_trainer: bool = False):
    """LoRA DPO of ``model`` on ``{"prompt", "chosen", "rejected"}`` rows; returns ``out_dir`` (or the trainer)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from safeclip.models.lora import quiet_checkpointing_alias

    settings = settings or DPOSettings()
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    if not rows:
        raise DataError("DPO needs at least one preference pair (all pairs tied? sample more captions)")
    out = Path(out_dir)
    lm, tokenizer = _load(model, settings.bf16)
    args = trl_config(DPOConfig, settings, out, progress, beta=settings.beta)
    with quiet_checkpointing_alias():
        trainer = DPOTrainer(model=lm, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=lora_config(settings.lora_r, settings.lora_alpha, settings.lora_dropout,
                                                     settings.target_modules, lm))
    with quiet_checkpointing_alias():
        trainer.train()
    if return_trainer:
        return trainer
    meta = {"stage": "dpo", "base_model": str(model), "settings": asdict(settings), "n_pairs": len(rows),
            "log": trainer.state.log_history}
    return save_trained(trainer, tokenizer, out, meta)
