"""Text-generation engines for the unsafe-caption generator: Hugging Face ``generate`` and vLLM's offline engine.

An engine is a callable ``prompts -> completions`` (one cleaned completion per prompt). Both load the generator
the same way: a plain model folder or hub name, or a *stage folder* of ``datagen sft`` / ``datagen dpo``
(``meta.json`` + ``adapter/``), which is loaded as its base model with the LoRA adapter applied, never merged
in low precision (a bf16 merge rounds DPO's tiny update away, see ``sft.merge_in_float32``).

    engine = hf_engine("runs/visu/dpo", batch_size=64, max_new_tokens=64)      # base = runs/visu/sft/merged
    engine = vllm_engine("runs/visu/dpo", max_new_tokens=64)                   # needs `pip install vllm` and a GPU
    texts = engine(prompts)

The vLLM path is written against vLLM's documented offline API (``LLM``, ``SamplingParams``, ``LoRARequest``)
and is untested here: vLLM cannot be installed beside this project's CPU torch, and no GPU was available.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from safeclip.datagen.prompts import clean_completion
from safeclip.errors import ConfigError, MissingFileError

Engine = Callable[[list[str]], list[str]]
STOP_STRINGS = ("\n", "###")  # a caption is one line; the template's next "### Input" ends it


def stage_adapter(spec: str | os.PathLike) -> tuple[str, Path] | None:
    """``(base model, adapter folder)`` of a ``datagen sft``/``dpo`` output folder, else None."""
    path = Path(spec)
    meta, adapter = path / "meta.json", path / "adapter"
    if not (meta.is_file() and (adapter / "adapter_config.json").is_file()):
        return None
    return json.loads(meta.read_text(encoding="utf-8"))["base_model"], adapter


def _torch_dtype(dtype: str, device: str):
    if dtype == "auto":  # the checkpoint's own dtype on a GPU; float32 on the CPU
        return "auto" if device.startswith("cuda") else torch.float32
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


def load_causal_lm(spec: str | os.PathLike, *, device: str | None = None, dtype: str = "auto"):
    """``(model, tokenizer)`` for generation: a model folder/hub name in its saved dtype (``auto``), or a stage
    folder as base + adapter applied (peft keeps the adapter in float32 beside a bf16/fp16 base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stage = stage_adapter(spec)
    source = stage[0] if stage else str(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(stage[1] if stage else spec))
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_torch_dtype(dtype, device))
    except OSError as err:
        raise MissingFileError(f"could not load causal LM {source!r}: {err}. Give a model folder, a hub name or a "
                               "`datagen sft`/`datagen dpo` output folder (meta.json + adapter/)") from err
    if stage:
        from peft import PeftModel

        from safeclip.models.lora import quiet_checkpointing_alias

        with quiet_checkpointing_alias():
            model = PeftModel.from_pretrained(model, str(stage[1]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


class StopOnStrings:
    """A ``generate`` stopping criterion: a sequence is done once its decoded new text holds a stop string.

    (transformers' own ``stop_strings`` needs a tokenizer whose vocabulary follows the BPE/SentencePiece prefix
    conventions; decoding works with any tokenizer, at the cost of one ``batch_decode`` per step.)
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], prompt_length: int) -> None:
        self.tokenizer, self.stop_strings, self.prompt_length = tokenizer, tuple(stop_strings), prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        done = [any(s in t.lstrip() for s in self.stop_strings) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], *, do_sample: bool = True, temperature: float = 1.0,
             top_p: float = 1.0, max_new_tokens: int = 48, num_return_sequences: int = 1,
             stop_strings: tuple[str, ...] = ()) -> list[str]:
    """Cleaned completions, ``num_return_sequences`` per prompt (prompt-major order), via ``model.generate``.

    ``stop_strings`` end each sequence at its first stop string, so a batch is not run to its longest output.
    """
    if not prompts:
        return []
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    batch.pop("token_type_ids", None)
    kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "num_return_sequences": num_return_sequences,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    if stop_strings:
        kwargs["stopping_criteria"] = [StopOnStrings(tokenizer, stop_strings, batch["input_ids"].shape[1])]
    out = model.generate(**batch, **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return [clean_completion(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def hf_generator(model, tokenizer, *, batch_size: int = 64, stop_strings: tuple[str, ...] = STOP_STRINGS,
                 **sampling) -> Engine:
    """``prompts -> completions`` with a loaded Hugging Face causal LM, ``batch_size`` prompts per ``generate``;
    prompts are sorted by length inside each call so that a batch pads little."""

    def generate(prompts: list[str]) -> list[str]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts: list[str] = [""] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, text in zip(chunk, complete(model, tokenizer, [prompts[i] for i in chunk],
                                               stop_strings=stop_strings, **sampling)):
                texts[i] = text
        return texts

    return generate


def hf_engine(spec: str | os.PathLike, *, device: str | None = None, dtype: str = "auto", **options) -> Engine:
    """:func:`hf_generator` around :func:`load_causal_lm` (``options``: batch_size, stop_strings, sampling)."""
    model, tokenizer = load_causal_lm(spec, device=device, dtype=dtype)
    return hf_generator(model, tokenizer, **options)


def vllm_engine(spec: str | os.PathLike, *, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64,
                stop_strings: tuple[str, ...] = STOP_STRINGS, seed: int = 0, max_lora_rank: int = 64,
                gpu_memory_utilization: float = 0.9) -> Engine:
    """``prompts -> completions`` with vLLM's offline ``LLM`` (one engine per GPU; shard rows across GPUs with
    one process each). A stage folder runs its base model with the LoRA adapter applied per request.

    Untested in this repository (see the module docstring); needs ``pip install "safeclip[vllm]"`` and a GPU.
    """
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as err:
        raise ImportError("the vllm engine needs vLLM: pip install 'safeclip[vllm]' (GPU machines; it pins its own "
                          "torch) or use --engine hf") from err
    stage = stage_adapter(spec)
    base = stage[0] if stage else str(spec)
    llm = LLM(model=base, enable_lora=bool(stage), max_lora_rank=max_lora_rank, seed=seed,
              gpu_memory_utilization=gpu_memory_utilization)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, stop=list(stop_strings),
                            seed=seed)
    lora = LoRARequest("generator", 1, str(stage[1])) if stage else None

    def generate(prompts: list[str]) -> list[str]:
        outputs = llm.generate(list(prompts), params, lora_request=lora, use_tqdm=False)
        return [clean_completion(o.outputs[0].text) for o in outputs]

    return generate


# ----------------------------------------------------------------------------- completions that are not captions

REFUSAL = re.compile(r"^\W*(i'm sorry|i am sorry|sorry,|i apologi[sz]e|i can ?not|i can't|i won't|i will not|"
                     r"i'm not able|i am not able|i'm unable|i am unable|as an ai|as a responsible|i must decline|"
                     r"i don't think i can|i cannot fulfill|unfortunately,? i)", re.I)


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def completion_problem(safe_text: str, completion: str) -> str | None:
    """Why ``completion`` is not an unsafe caption of ``safe_text``: ``empty``, ``refusal`` (a chat model's
    apology), ``echo`` (the safe caption or the prompt repeated); None when it is usable."""
    if not _normalized(completion):
        return "empty"
    if REFUSAL.search(completion):
        return "refusal"
    if _normalized(completion) == _normalized(safe_text) or "below is an input string" in completion.lower():
        return "echo"
    return None
