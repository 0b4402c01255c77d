"""A tiny SFT then DPO run (trl + peft LoRA) on the world's stand-in LM: adapters learn, base weights stay."""

import json

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
    assert main(["datagen", "preferences", "--model", str(lm_dir), "--captions", str(captions), "--clip",
                 str(tiny_clip_dir), "--max-new-tokens", "6", "--out", str(prefs_out)]) == 0
    for row in map(json.loads, (prefs_out / "preferences.jsonl").read_text().splitlines()):
        assert row["chosen_rank"] > row["rejected_rank"] and row["prompt"].endswith("### Response:")
    gen_out = tmp_path / "gen"
    assert main(["datagen", "generate", "--model", str(lm_dir), "--captions", str(captions), "--max-new-tokens",
                 "6", "--batch-size", "3", "--out", str(gen_out)]) == 0
    rows = [json.loads(x) for x in (gen_out / "unsafe_captions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(8)]
    assert main(["datagen", "report", "--rows", str(gen_out / "unsafe_captions.jsonl"), "--clip", str(tiny_clip_dir),
                 "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "quality.json").read_text())
    assert report["overall"]["n"] == 8 and sum(v["n"] for v in report["per_category"].values()) == 8
    assert 0.0 <= report["overall"]["nsfw_rate[lexicon]"] <= 100.0 and "clip_sim" in report["overall"]
    # bad input: exit code 2 with a message naming the fix
    assert main(["datagen", "report", "--rows", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r2")]) == 2
    assert main(["datagen", "report", "--rows", str(captions), "--judge", "perspective", "--out", str(tmp_path / "r3")]) == 2
    assert "accepted forms" in capsys.readouterr().err
