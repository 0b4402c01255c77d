"""A real-shape dry run: CLIP with ViT-L/14's exact configuration trains, evaluates and exports on the CPU.

    python -m pytest tests/integration/test_real_shape.py -m slow   # ~6 min of CPU time; peaks at ~14.6 GB of memory

The weights are random, drawn from the configuration (nothing is downloaded): what is exercised is the
real backbone's shapes (24-layer 1024-wide ViT at 224 px with 14 px patches, 12-layer 768-wide text encoder
over 77 positions, 768-d projections), the paper recipe's LoRA targets on them (configs/vit-l-14_safe-clip.yaml),
the reference cache and loader workers at that size, and every export of a 428M-parameter model. Only the
tokenizer is a small one learnt on the test captions (its ids index the real 49,408-row embedding table),
since the real BPE files would need a download.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPVisionModel

from safeclip.cli import main
from safeclip.models.clip import encode_texts, load_clip
from safeclip.models.tokenizer import train_clip_tokenizer
from tests.fixtures import write_quadruplets

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "vit-l-14_safe-clip.yaml"

# openai/clip-vit-large-patch14's config.json, field for field (token ids aside: see vit_l_14_folder).
VIT_L_14 = {
    "projection_dim": 768,
    "logit_scale_init_value": 2.6592,
    "text_config": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                      "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
                      "layer_norm_eps": 1e-5},
}


@pytest.fixture(scope="module")
def vit_l_14_folder(tmp_path_factory):
    """A Hugging Face CLIP folder with ViT-L/14's architecture and random weights, and OpenAI's preprocessing."""
    from tests.fixtures import COLOURS, SHAPES, UNSAFE

    texts = [f"a {c} {s} {p}" for c in COLOURS for s in SHAPES for p in [*UNSAFE.values(), ""]]
    tokenizer = train_clip_tokenizer(texts * 3, vocab_size=300, model_max_length=77)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(text_config={**VIT_L_14["text_config"], **ids}, vision_config=VIT_L_14["vision_config"],
                        projection_dim=VIT_L_14["projection_dim"], logit_scale_init_value=VIT_L_14["logit_scale_init_value"])
    torch.manual_seed(0)
    model = CLIPModel(config)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(427.6e6, rel=1e-3)  # ViT-L/14's size
    out = tmp_path_factory.mktemp("vit_l_14")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor().save_pretrained(out)  # the defaults are OpenAI CLIP's: 224 px, bicubic, CLIP mean/std
    return out


def test_vit_l_14_shape_trains_evaluates_and_exports(tmp_path, vit_l_14_folder):
    data = write_quadruplets(tmp_path / "data", 12, seed=0)
    val = write_quadruplets(tmp_path / "data", 4, seed=1, name="val.jsonl")
    run = tmp_path / "run"
    assert main(["train", "--config", str(RECIPE), f"model.name={vit_l_14_folder}",
                 f"data.train={data}", f"data.val={val}", "data.batch_size=4", "data.num_workers=1",
                 "optim.epochs=1", "optim.max_steps=2", "run.mixed_precision=no", "run.eval_batch_size=8",
                 "run.progress=false", "run.log_every=1", f"run.out_dir={run}"]) == 0
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(torch.isfinite(torch.tensor(r["total"])) for r in log)
    # The recipe's LoRA targets on the real shapes: r=16 on every k/v/out projection and MLP of both towers
    lora = load_file(run / "checkpoints" / "epoch-0001" / "lora.safetensors")
    assert sum(v.numel() for v in lora.values()) > 5e6
    assert any("patch_embedding" in k for k in lora) and any("text_model.encoder.layers.11.mlp.fc2" in k for k in lora)
    assert (run / "reference_cache").is_dir() and (run / "best" / "metrics.json").is_file()

    assert main(["eval", "retrieval", "--data", str(val), "--model", f"base={vit_l_14_folder}",
                 "--model", f"safe-clip={run}", "--batch-size", "8", "--out", str(tmp_path / "results")]) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(results["models"]) == {"base", "safe-clip"}

    export = tmp_path / "export"
    assert main(["export", "--model", str(run), "--out", str(export), "--targets", "hf,diffusers,llava,openclip"]) == 0
    hf = load_clip(export / "hf")
    safe = load_clip(vit_l_14_folder)
    assert hf.vision.config.num_hidden_layers == 24 and hf.text.config.hidden_size == 768
    # the merged export carries the trained adapters: its embeddings differ from the base's
    texts = ["a red circle covered in blood"]
    assert not torch.allclose(encode_texts(hf.text, hf.tokenizer, texts), encode_texts(safe.text, safe.tokenizer, texts))
    assert CLIPTextModel.from_pretrained(export / "diffusers" / "text_encoder").config.max_position_embeddings == 77
    assert CLIPVisionModel.from_pretrained(export / "llava" / "vision_tower").config.patch_size == 14
    assert any(p.suffix == ".safetensors" for p in (export / "openclip").iterdir())
