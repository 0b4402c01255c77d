"""A tiny SFT then DPO run (trl + peft LoRA) on the world's stand-in LM: adapters learn, base weights stay."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("trl")

from safeclip.datagen.dpo import DPOSettings, run_dpo  # noqa: E402
from safeclip.datagen.prompts import format_prompt  # noqa: E402
from safeclip.datagen.sft import SFTSettings, run_sft, save_trained, sft_rows  # noqa: E402
from safeclip.datagen.world_lm import WorldLMSettings, pretrain_world_lm  # noqa: E402

SAFE = ["a red circle left of a blue square", "a big green star", "a small grey bar above a yellow cross",
        "a white diamond on a black background"]
UNSAFE = ["a red circle covered in blood left of a blue square", "a big green star with a loaded gun",
          "a small grey bar above a yellow cross during a robbery", "a white diamond smashed by vandals"]
CATS = ["blood", "weapons", "theft", "vandalism"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    return pretrain_world_lm(SAFE, SAFE + UNSAFE, out, WorldLMSettings(steps=10, n_embd=32, n_layer=1, batch_size=8),
                             progress=False)


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach().clone()
            for n, p in model.named_parameters() if "lora_" not in n}


def _check_adapters_trained_base_frozen(trainer, reference_dir):
    from transformers import AutoModelForCausalLM

    model = trainer.model
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    # lora_B starts at zero: every one moved, so every adapter matrix received updates
    assert all(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).state_dict()
    base = _base_weights(model)
    compared = 0
    for name, tensor in base.items():
        if name in reference:
            assert torch.equal(tensor, reference[name]), f"base weight {name} changed"
            compared += 1
    assert compared >= len(reference) // 2


def test_sft_then_dpo_train_lora_only(lm_dir, tmp_path):
    pairs = [{"safe_text": s, "unsafe_text": u, "category": c} for s, u, c in zip(SAFE, UNSAFE, CATS)]
    assert sft_rows(pairs)[0] == {"prompt": format_prompt(SAFE[0], "blood"), "completion": " " + UNSAFE[0]}
    sft = run_sft(lm_dir, pairs, tmp_path / "sft",
                  SFTSettings(lora_r=4, lora_alpha=8, batch_size=4, max_steps=3, lr=1e-2,
                              target_modules="c_attn,c_proj,c_fc"), progress=False, return_trainer=True)
    _check_adapters_trained_base_frozen(sft, lm_dir)
    save_trained(sft, sft.processing_class, tmp_path / "sft", {"stage": "sft"})
    adapter = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    merged = load_file(tmp_path / "sft" / "merged" / "model.safetensors")
    original = load_file(lm_dir / "model.safetensors")
    assert any(not torch.equal(merged[k], original[k]) for k in original if "attn.c_attn.weight" in k)

    prefs = [{"prompt": format_prompt(s, c), "chosen": " " + u, "rejected": " " + s}
             for s, u, c in zip(SAFE, UNSAFE, CATS)]
    dpo = run_dpo(tmp_path / "sft" / "merged", prefs, tmp_path / "dpo",
                  DPOSettings(lora_r=4, lora_alpha=8, batch_size=4, max_steps=2, lr=1e-2,
                              target_modules="c_attn,c_proj,c_fc"), progress=False, return_trainer=True)
    _check_adapters_trained_base_frozen(dpo, tmp_path / "sft" / "merged")
    logs = [entry for entry in dpo.state.log_history if "train_loss" in entry]
    assert logs and logs[-1]["train_loss"] == pytest.approx(logs[-1]["train_loss"])  # finite


def test_dpo_rejects_empty_pairs(lm_dir, tmp_path):
    with pytest.raises(ValueError, match="at least one preference pair"):
        run_dpo(lm_dir, [], tmp_path / "dpo", DPOSettings(max_steps=1), progress=False)
    with pytest.raises(ValueError, match="safe_text"):
        run_sft(lm_dir, [{"safe_text": "x"}], tmp_path / "sft", SFTSettings(max_steps=1), progress=False)


def test_cli_preferences_generate_report(lm_dir, tmp_path, tiny_clip_dir, capsys):
    from safeclip.cli import main

    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"id": f"c{i}", "caption": s}) + "\n" for i, s in enumerate(SAFE * 2)))
    prefs_out = tmp_path / "prefs"
    with pytest.raises(SystemExit):  # outside the world a judge must be named
        main(["datagen", "preferences", "--model", str(lm_dir), "--captions", str(captions), "--clip",
              str(tiny_clip_dir), "--out", str(prefs_out)])
    assert main(["datagen", "preferences", "--model", str(lm_dir), "--captions", str(captions), "--clip",
                 str(tiny_clip_dir), "--max-new-tokens", "6", "--judge", "lexicon", "--out", str(prefs_out)]) == 0
    assert len((prefs_out / "samples-0.jsonl").read_text().splitlines()) == 8  # samples saved before scoring
    for row in map(json.loads, (prefs_out / "preferences.jsonl").read_text().splitlines()):
        assert row["chosen_rank"] > row["rejected_rank"] and row["prompt"].endswith("### Response:")
    gen_out = tmp_path / "gen"
    assert main(["datagen", "generate", "--model", str(lm_dir), "--captions", str(captions), "--max-new-tokens",
                 "6", "--batch-size", "3", "--out", str(gen_out)]) == 0
    rows = [json.loads(x) for x in (gen_out / "unsafe_captions.jsonl").read_text().splitlines()]
    counts = json.loads((gen_out / "generation_report.json").read_text())
    assert counts["rows"] == 8 and len(rows) == counts["kept"] == 8 - sum(counts["left_out"].values())
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # input order, bad rows left out
    with pytest.raises(SystemExit):
        main(["datagen", "report", "--rows", str(gen_out / "unsafe_captions.jsonl"), "--toxicity", "lexicon",
              "--out", str(tmp_path / "report")])
    assert main(["datagen", "report", "--rows", str(gen_out / "unsafe_captions.jsonl"), "--clip", str(tiny_clip_dir),
                 "--judge", "lexicon", "--toxicity", "lexicon", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "quality.json").read_text())
    assert report["overall"]["n"] == len(rows) and sum(v["n"] for v in report["per_category"].values()) == len(rows)
    assert 0.0 <= report["overall"]["nsfw_rate[lexicon]"] <= 100.0 and "clip_sim" in report["overall"]
    # bad input: exit code 2 with a message naming the fix
    assert main(["datagen", "report", "--rows", str(tmp_path / "nope.jsonl"), "--judge", "lexicon", "--toxicity", "none",
                 "--out", str(tmp_path / "r2")]) == 2
    assert main(["datagen", "report", "--rows", str(captions), "--judge", "perspective", "--toxicity", "none",
                 "--out", str(tmp_path / "r3")]) == 2
    assert "accepted forms" in capsys.readouterr().err


def test_bf16_merge_keeps_a_tiny_dpo_sized_update(lm_dir, tmp_path):
    """Merged and adapter outputs agree for a bf16 model whose LoRA update is far below bf16's rounding step."""
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeclip.datagen.engines import load_causal_lm
    from safeclip.datagen.sft import lora_config

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    base = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.bfloat16)
    base.save_pretrained(tmp_path / "base-bf16")
    tokenizer.save_pretrained(tmp_path / "base-bf16")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base-bf16", dtype=torch.bfloat16),
                           lora_config(4, 8, 0.0, "c_attn,c_proj,c_fc"))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # dW = B A * 2: about 1e-5, under half a bf16 step of weights near 0.02
            param.data = torch.randn_like(param) * 3e-5
    batch = tokenizer([format_prompt(SAFE[0], "blood")], return_tensors="pt")
    batch.pop("token_type_ids", None)

    def logits(m):
        import copy

        with torch.no_grad():
            return copy.deepcopy(m).float()(**batch).logits

    adapter_out = logits(model)  # the adapter applied, float32
    base_out = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "base-bf16", dtype=torch.bfloat16))
    update = (adapter_out - base_out).abs().max()
    assert update > 1e-5  # the update moves the outputs
    save_trained(SimpleNamespace(model=model), tokenizer, tmp_path / "dpo", {"stage": "dpo",
                                                                              "base_model": str(tmp_path / "base-bf16")})
    merged, _ = load_causal_lm(tmp_path / "dpo" / "merged", device="cpu")
    assert (logits(merged) - adapter_out).abs().max() < 0.02 * update  # today's bf16 merge: error == update
    applied, _ = load_causal_lm(tmp_path / "dpo", device="cpu")  # the stage folder: base + adapter applied
    assert (logits(applied) - adapter_out).abs().max() < 0.02 * update


def _coco(root, n_images=4):
    """COCO's own layout: annotations/captions_val2017.json beside val2017/<12-digit id>.jpg, 2 captions each."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, annotations = [], []
    for k in range(n_images):
        name = f"{k + 1:012d}.jpg"
        Image.new("RGB", (32, 32), (40 * k, 80, 120)).save(root / "val2017" / name)
        images.append({"id": k + 1, "file_name": name, "width": 32, "height": 32})
        for j in range(2):
            annotations.append({"id": 100 * (k + 1) + j, "image_id": k + 1, "caption": f"{SAFE[k % 4]} number {j}"})
    path = root / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_captions_json_to_a_training_ready_dataset(lm_dir, tmp_path, tiny_clip_dir):
    from PIL import Image

    from safeclip.cli import main
    from safeclip.config import load_config
    from safeclip.data import read_quadruplets
    from safeclip.datagen.generate import CaptionSource, load_captions
    from safeclip.datagen.images import generate_images, merge_image_parts
    from safeclip.train import train

    captions = _coco(tmp_path / "coco")
    rows = load_captions(CaptionSource(captions=str(captions)))
    assert len(rows) == 8 and rows[0]["safe_image"] == str((tmp_path / "coco" / "val2017" / "000000000001.jpg").resolve())
    one = load_captions(CaptionSource(captions=str(captions), one_per_image=True, sample_seed=3))
    assert sorted(r["image_id"] for r in one) == ["1", "2", "3", "4"]  # one caption per image
    assert one != load_captions(CaptionSource(captions=str(captions), one_per_image=True, sample_seed=4))
    sample = load_captions(CaptionSource(captions=str(captions), sample=5, sample_seed=1))
    assert len(sample) == 5 and sample == load_captions(CaptionSource(captions=str(captions), sample=5, sample_seed=1))
    assert [r["id"] for r in sample] == [r["id"] for r in rows if r in sample]  # file order kept
    out = tmp_path / "text"
    assert main(["datagen", "generate", "--model", str(lm_dir), "--captions", str(captions), "--max-new-tokens", "6",
                 "--retries", "0", "--out", str(out)]) == 0
    generated = [json.loads(x) for x in (out / "unsafe_captions.jsonl").read_text().splitlines()]
    assert generated and all(Path(g["safe_image"]).is_file() for g in generated)
    images = tmp_path / "images"
    generate_images(generated, images, lambda text, seed, row: Image.new("RGB", (32, 32), (seed % 256, 0, 0)),
                    lambda ims, ps: [1.0] * len(ims), rank=0, world_size=1, progress=False)
    data = merge_image_parts(images, generated)
    records, report = read_quadruplets(data)
    assert report.modalities == ("safe_text", "unsafe_text", "safe_image", "unsafe_image")
    cfg = load_config(None, [f"model.name={tiny_clip_dir}", f"data.train={data}", "data.batch_size=4", "lora.r=4",
                             "optim.epochs=1", f"run.out_dir={tmp_path / 'run'}", "run.progress=false"])
    run = train(cfg)
    assert json.loads((run / "meta.json").read_text())["mode"].startswith("full quadruplets")


def test_generation_regenerates_refusals_and_echoes(tmp_path):
    from safeclip.datagen.generate import generate_dataset, merge_parts

    rows = [{"id": f"r{i}", "safe_text": f"a red circle {i}"} for i in range(4)]
    calls = []

    def engine(prompts):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            text = p.split("### Input: ")[1].split("\n")[0]
            n = sum(1 for _ in calls)
            if text.endswith("0"):
                out.append("I'm sorry, but I cannot help with that." if n == 1 else text + " with a gun")
            elif text.endswith("1"):
                out.append(text)  # echoes the safe caption every time
            elif text.endswith("2"):
                out.append("" if n == 1 else text + " in blood")
            else:
                out.append(text + " with a knife")
        return out

    generate_dataset(rows, tmp_path, engine, batch_size=4, retries=2, rank=0, world_size=1, progress=False)
    assert calls == [4, 3, 1]  # r0, r1, r2 regenerated; r1 echoes twice more, then is left out
    kept = [json.loads(x) for x in merge_parts(tmp_path, rows).read_text().splitlines()]
    assert [r["id"] for r in kept] == ["r0", "r2", "r3"]
    assert kept[0]["unsafe_text"] == "a red circle 0 with a gun" and "problem" not in kept[0]
    counts = json.loads((tmp_path / "generation_report.json").read_text())
    assert counts == {"rows": 4, "kept": 3, "met": {"refusal": 1, "echo": 3, "empty": 1}, "left_out": {"echo": 1}}


def test_preference_samples_are_saved_before_scoring(lm_dir, tmp_path, tiny_clip):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeclip.datagen.preferences import make_preferences

    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    generated = []
    original = model.generate

    def counted(*args, **kwargs):
        out = original(*args, **kwargs)
        generated.append(out.shape[0])
        return out

    model.generate = counted

    def failing_judge(texts):
        raise ConnectionError("the judge went away")

    failing_judge.name = "down"
    with pytest.raises(ConnectionError):
        make_preferences(model, tokenizer, SAFE, CATS, tiny_clip, failing_judge, max_new_tokens=4, progress=False,
                         samples_dir=tmp_path)
    assert len((tmp_path / "samples-0.jsonl").read_text().splitlines()) == 4 and sum(generated) == 8
    from safeclip.judges import build_judge

    make_preferences(model, tokenizer, SAFE, CATS, tiny_clip, build_judge("lexicon"), max_new_tokens=4,
                     progress=False, samples_dir=tmp_path)
    assert sum(generated) == 8  # the rerun scored the saved samples, sampled nothing
