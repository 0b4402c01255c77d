"""Train a small CLIP-format BPE tokenizer on a list of captions.

The result is a :class:`transformers.CLIPTokenizer` (same normalisation, pre-tokenisation and
``</w>`` end-of-word BPE as OpenAI CLIP), so every tool that loads CLIP tokenizers loads it.
Used by the tests and the offline miniature world; real checkpoints ship their own tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# The split regex CLIP uses before byte-level BPE.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def train_clip_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 1000, model_max_length: int = 77
) -> CLIPTokenizer:
    """Return a CLIP tokenizer whose BPE merges were learnt on ``texts``.

    Token ids: ``0`` is ``<|startoftext|>``, ``1`` is ``<|endoftext|>`` (also the pad token).
    """
    bpe = Tokenizer(models.BPE(unk_token=EOS_TOKEN, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return CLIPTokenizer(vocab=ordered_vocab(state["vocab"], merges), merges=merges, model_max_length=model_max_length)


def ordered_vocab(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Ids in a fixed order (specials, sorted base symbols, then merge results in merge order).

    The trainer's own id order can vary between runs for equally frequent symbols; this one depends
    only on the learnt symbols and merges, so the same captions always give the same tokenizer.
    """
    merged = ["".join(pair) for pair in merges]
    merged_set = set(merged)
    base = sorted(t for t in vocab if t not in merged_set and t not in (BOS_TOKEN, EOS_TOKEN))
    ordered = [BOS_TOKEN, EOS_TOKEN, *base, *dict.fromkeys(merged)]
    return {token: i for i, token in enumerate(ordered)}
