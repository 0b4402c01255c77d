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


@pytest.fixture(scope="session")
def openai_style_clip_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny CLIP folder stored like OpenAI's: config says logit_scale_init_value 2.6592 (a scale of 14.3),
    the stored ``logit_scale`` weight is the trained ln 100."""
    import math

    from transformers import CLIPModel

    from safeclip.models.clip import tiny_clip_config, tiny_image_processor

    config = tiny_clip_config(tiny_tokenizer, image_size=32, patch_size=8, hidden_size=32, projection_dim=32,
                              num_layers=2, num_heads=2, intermediate_size=64)
    config.logit_scale_init_value = 2.6592
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    out = tmp_path_factory.mktemp("openai_style_clip")
    model.save_pretrained(out, safe_serialization=True)
    tiny_tokenizer.save_pretrained(out)
    tiny_image_processor(32).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def safe_clip_dir(tmp_path_factory, tiny_tokenizer):
    """A second tiny CLIP folder (seed 1), standing in for a fine-tuned model beside ``tiny_clip_dir``."""
    from safeclip.models.clip import build_tiny_clip
    from safeclip.models.lora import save_merged_clip

    out = tmp_path_factory.mktemp("safe_clip")
    save_merged_clip(build_tiny_clip(tiny_tokenizer, seed=1), out)
    return out
