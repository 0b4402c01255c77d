"""The offline world's stand-in for Llama-2-chat: a tiny GPT-2 (transformers ``GPT2LMHeadModel``) with a
word-level tokenizer trained by the ``tokenizers`` library on the world's captions.

``pretrain_world_lm`` teaches it the paper's prompt template on *safe captions only* (the answer is the safe
caption itself, whatever category the prompt asks for), standing in for a chat model that refuses to write
unsafe text; SFT and DPO (``sft.py``, ``dpo.py``) then turn it into an NSFW generator.

    python -c "from safeclip.datagen.world_lm import train_world_tokenizer; print(len(train_world_tokenizer(['a red circle'])))"
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from safeclip.checkpoint import write_json_atomic
from safeclip.config import Settings, setting
from safeclip.datagen.prompts import TEMPLATE, format_prompt
from safeclip.schedule import warmup_cosine_schedule
from safeclip.world.categories import CATEGORIES

EOS = "<|endoftext|>"
UNK = "<unk>"


def train_world_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``texts`` plus the prompt template and category names (deterministic ids)."""
    extra = [TEMPLATE.format(text="", condition=" about"), *CATEGORIES]
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[EOS, UNK], min_frequency=1, show_progress=False)
    tok.train_from_iterator(sorted(set(texts)) + extra, trainer)
    vocab = tok.get_vocab()
    ordered = [EOS, UNK] + sorted(w for w in vocab if w not in (EOS, UNK))
    tok.model = models.WordLevel({w: i for i, w in enumerate(ordered)}, unk_token=UNK)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=UNK, model_max_length=128)


@dataclass
class WorldLMSettings(Settings):
    """Size and schedule of the world's stand-in LM (defaults: about a minute on 2 CPU cores)."""

    seed: int = setting(0, "Seed of the initial weights and of the sampled batches.")
    n_layer: int = setting(2, "Transformer blocks.", ge=1)
    n_embd: int = setting(96, "Width.", ge=1)
    n_head: int = setting(4, "Attention heads.", ge=1)
    n_positions: int = setting(96, "Longest prompt + answer in tokens.", ge=2)
    steps: int = setting(400, "Optimizer steps of safe-only pretraining.", ge=1)
    batch_size: int = setting(32, "Sequences per step.", ge=1)
    lr: float = setting(3e-3, "AdamW peak learning rate (cosine decay).", gt=0.0)


def build_world_lm(tokenizer: PreTrainedTokenizerFast, settings: WorldLMSettings) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized by ``settings``."""
    torch.manual_seed(settings.seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=settings.n_positions, n_embd=settings.n_embd,
                        n_layer=settings.n_layer, n_head=settings.n_head, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def pretrain_world_lm(safe_captions: list[str], vocabulary_texts: list[str], out_dir: str | os.PathLike,
                      settings: WorldLMSettings | None = None, *, progress: bool = True) -> Path:
    """Train (or reuse) the safe-only LM in ``out_dir``: prompt(t, random category or none) -> t.

    ``vocabulary_texts`` (all world captions, safe and unsafe) only fix the tokenizer's vocabulary; the
    model is trained on ``safe_captions`` alone. Returns ``out_dir`` (a ``from_pretrained`` folder).
    """
    settings = settings or WorldLMSettings()
    out = Path(out_dir)
    key = {"settings": asdict(settings), "n_captions": len(safe_captions)}
    meta = out / "world_lm.json"
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return out
    started = time.perf_counter()
    tokenizer = train_world_tokenizer(list(vocabulary_texts) + list(safe_captions))
    model = build_world_lm(tokenizer, settings)
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=20, total_steps=settings.steps)
    model.train()
    losses = []
    for step in tqdm(range(settings.steps), desc="world LM (safe only)", disable=not progress):
        texts = []
        for _ in range(settings.batch_size):
            caption = rng.choice(safe_captions)
            category = rng.choice(CATEGORIES) if rng.random() < 0.5 else None
            texts.append(format_prompt(caption, category) + " " + caption + EOS)
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=settings.n_positions)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        # the first EOS (end of answer) is padding-coloured but must be learnt: keep it
        lengths = batch["attention_mask"].sum(1)
        labels[torch.arange(len(texts)), (lengths - 1).clamp(min=0)] = tokenizer.eos_token_id
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json_atomic(meta, {"key": key, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
                             "seconds": time.perf_counter() - started})
    return out
