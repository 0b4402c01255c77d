"""Shared fixtures: offline mode, a tiny CLIP-format tokenizer and tiny CLIP models built from configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

WORDS = (
    "a the small big red blue green yellow grey white black circle square triangle star left right of on "
    "above below background with and near covered in blood weapon holding knife drug smoke angry crying"
).split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from safeclip.models.tokenizer import train_clip_tokenizer

    texts = [" ".join(WORDS[i : i + 6]) for i in range(len(WORDS))] * 3
    return train_clip_tokenizer(texts, vocab_size=400, model_max_length=32)


@pytest.fixture()
def tiny_clip(tiny_tokenizer):
    from safeclip.models.clip import build_tiny_clip

    return build_tiny_clip(tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny CLIP saved as a Hugging Face folder (what `load_clip` reads)."""
    from safeclip.models.clip import build_tiny_clip
    from safeclip.models.lora import save_merged_clip

    out = tmp_path_factory.mktemp("tiny_clip")
    save_merged_clip(build_tiny_clip(tiny_tokenizer, seed=0), out)
    return out
