"""Adversarial Safe-CLIP (loss.adversarial): the inner attacks keep their budgets and raise their objectives,
the default step is the plain Safe-CLIP step bit for bit, and a tiny adversarial run trains and logs its term."""

import json

import pytest
import torch

from safeclip.adversarial_training import (
    attacked_unsafe_image,
    embedding_scale,
    perturb_token_embeddings,
    text_attack_objective,
    with_suffix_slots,
)
from safeclip.config import ConfigError, load_config
from safeclip.data import QuadrupletCollator, QuadrupletDataset, read_quadruplets
from safeclip.models.clip import encode_pixel_batch, encode_token_batch, load_clip
from safeclip.models.lora import adapters_disabled, lora_parameters
from safeclip.train import configured_objective, encode_batch_images, encode_batch_texts, prepare_encoders, \
    reference_embeddings, safe_clip_step_losses, train
from tests.fixtures import write_quadruplets


def tiny_config(tmp_path, clip_dir, data, *extra):
    return load_config(None, [
        f"model.name={clip_dir}", f"data.train={data}", f"data.val={data}", "data.batch_size=8", "lora.r=4",
        "lora.alpha=4", "lora.dropout=0.0", "optim.epochs=1", "optim.lr=1e-2", f"run.out_dir={tmp_path / 'run'}",
        "run.progress=false", "run.log_every=1", *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_quadruplets(tmp_path_factory.mktemp("data"), 8)


def encoders_and_batch(tmp_path, clip_dir, data, *extra):
    """Prepared encoders whose LoRA update is non-zero (T != T0, as after some training) and one real batch."""
    cfg = tiny_config(tmp_path, clip_dir, data, *extra)
    bundle = load_clip(clip_dir)
    torch.manual_seed(0)
    text, vision = prepare_encoders(bundle, cfg)
    with torch.no_grad():
        for param in [*lora_parameters(text).values(), *lora_parameters(vision).values()]:
            param.add_(torch.randn_like(param) * 0.3)
    records, report = read_quadruplets(data)
    dataset = QuadrupletDataset(records, bundle.image_processor, report.modalities)
    batch = QuadrupletCollator(bundle.tokenizer)([dataset[i] for i in range(8)])
    return cfg, bundle, text, vision, batch


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_text_attack_stays_in_budget_touches_only_real_tokens_and_raises_its_objective(tmp_path, tiny_clip_dir, data, norm):
    cfg, _, text, _, batch = encoders_and_batch(tmp_path, tiny_clip_dir, data, f"loss.adversarial.text_norm={norm}",
                                                "loss.adversarial.text_steps=5", "loss.adversarial.text_eps=2")
    ids, mask = batch["unsafe_input_ids"], batch["unsafe_attention_mask"]
    with torch.no_grad(), adapters_disabled(text):
        target = encode_token_batch(text, ids, mask)
    delta = perturb_token_embeddings(text, ids, mask, target, cfg.loss.adversarial)
    eps = 2 * embedding_scale(text)
    size = delta.abs().amax(dim=(1, 2)) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and (size > 0.5 * eps).all()
    assert delta[mask == 0].abs().max() == 0  # padding positions are never perturbed
    with torch.no_grad():
        clean = text_attack_objective(text, ids, mask, torch.zeros_like(delta), target)
        attacked = text_attack_objective(text, ids, mask, delta, target)
    assert attacked.mean() > clean.mean() + 1e-3, (clean, attacked)
    assert not any(p.grad is not None for p in text.parameters())  # the inner attack never touches parameter grads


def test_image_attack_is_pgd_within_budget_and_raises_its_objective(tmp_path, tiny_clip_dir, data):
    cfg, bundle, _, vision, batch = encoders_and_batch(tmp_path, tiny_clip_dir, data, "loss.adversarial.image_eps=4",
                                                       "loss.adversarial.image_steps=5")
    captured = {}
    import safeclip.adversarial_training as module

    real_pgd = module.pgd

    def recording_pgd(objective, x, budget):
        captured["x"], captured["objective"] = x, objective
        captured["x_adv"] = real_pgd(objective, x, budget)
        return captured["x_adv"]

    module.pgd = recording_pgd
    try:
        attacked = attacked_unsafe_image(vision, vision, batch, cfg.loss.adversarial, bundle.image_processor, torch.float32)
    finally:
        module.pgd = real_pgd
    assert (captured["x_adv"] - captured["x"]).abs().max() <= 4 / 255 + 1e-6
    with torch.no_grad():
        assert captured["objective"](captured["x_adv"]).mean() > captured["objective"](captured["x"]).mean() + 1e-4
        clean = encode_pixel_batch(vision, batch["unsafe_pixels"])
    assert attacked.requires_grad and not torch.equal(attacked.detach(), clean)


def test_default_step_is_the_plain_safe_clip_step_bit_for_bit(tmp_path, tiny_clip_dir, data):
    cfg, bundle, text, vision, batch = encoders_and_batch(tmp_path, tiny_clip_dir, data)
    assert cfg.loss.adversarial.enabled is False
    terms = safe_clip_step_losses(text, vision, text, vision, batch, cfg, torch.float32, None, bundle.image_processor)
    terms["total"].backward()
    grads = [p.grad.clone() for p in [*text.parameters(), *vision.parameters()] if p.requires_grad]
    text.zero_grad(), vision.zero_grad()
    refs = reference_embeddings(text, vision, batch, torch.float32)  # the step as written before loss.adversarial
    plain = configured_objective({**encode_batch_texts(text, batch), **encode_batch_images(vision, batch, torch.float32)},
                                 refs, cfg)
    plain["total"].backward()
    plain_grads = [p.grad for p in [*text.parameters(), *vision.parameters()] if p.requires_grad]
    assert "adversarial" not in terms and terms.keys() == plain.keys()
    assert all(torch.equal(terms[k], plain[k]) for k in terms)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))

    on = tiny_config(tmp_path, tiny_clip_dir, data, "loss.adversarial.enabled=true")
    attacked = safe_clip_step_losses(text, vision, text, vision, batch, on, torch.float32, None, bundle.image_processor)
    assert attacked["adversarial"] > 0 and torch.allclose(attacked["total"], terms["total"] + attacked["adversarial"])


def test_tiny_adversarial_run_trains_and_logs_its_term(tmp_path, tiny_clip_dir, data):
    cfg = tiny_config(tmp_path, tiny_clip_dir, data, "loss.adversarial.enabled=true", "loss.adversarial.weight=0.5")
    run_dir = train(cfg)
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert rows and all("adversarial" in row and row["adversarial"] == row["adversarial"] for row in rows)
    assert (run_dir / "best").is_dir()


def test_bad_adversarial_settings_are_named(tmp_path, tiny_clip_dir, data):
    with pytest.raises(ConfigError, match="loss.adversarial.text_norm"):
        tiny_config(tmp_path, tiny_clip_dir, data, "loss.adversarial.text_norm=l1").validate()
    with pytest.raises(ConfigError, match="safe-clip only"):
        tiny_config(tmp_path, tiny_clip_dir, data, "method=hysac", "loss.adversarial.enabled=true").validate()


def test_suffix_attack_keeps_the_caption_and_perturbs_only_its_slots(tmp_path, tiny_clip_dir, data):
    cfg, _, text, _, batch = encoders_and_batch(tmp_path, tiny_clip_dir, data, "loss.adversarial.text_suffix=3",
                                                "loss.adversarial.text_steps=5", "loss.adversarial.text_eps=2")
    ids, mask = batch["unsafe_input_ids"], batch["unsafe_attention_mask"]
    torch.manual_seed(0)
    long_ids, long_mask, slots = with_suffix_slots(text, ids, mask, 3)
    config = text.config
    for row in range(len(ids)):
        n = int(mask[row].sum())
        assert long_ids[row, : n - 1].tolist() == ids[row, : n - 1].tolist()  # bos + caption kept
        assert long_ids[row, n + 2].item() == ids[row, n - 1].item() == config.eos_token_id  # end token after the slots
        assert slots[row].nonzero().flatten().tolist() == [n - 1, n, n + 1]
        assert not set(long_ids[row, n - 1 : n + 2].tolist()) & {config.bos_token_id, config.eos_token_id}
        assert int(long_mask[row].sum()) == n + 3
    with torch.no_grad(), adapters_disabled(text):
        target = encode_token_batch(text, ids, mask)
    delta = perturb_token_embeddings(text, long_ids, long_mask, target, cfg.loss.adversarial, positions=slots)
    assert delta.abs().amax() <= 2 * embedding_scale(text) + 1e-6
    assert torch.equal(delta[slots == 0], torch.zeros_like(delta[slots == 0]))  # the caption's tokens untouched
    with torch.no_grad():
        before = text_attack_objective(text, long_ids, long_mask, torch.zeros_like(delta), target)
        after = text_attack_objective(text, long_ids, long_mask, delta, target)
    assert after.mean() > before.mean() + 1e-3


def test_suffix_slots_take_the_place_of_the_last_caption_tokens_when_positions_run_out(tiny_clip_dir):
    text = load_clip(tiny_clip_dir).text
    limit = text.config.max_position_embeddings
    ids = torch.full((1, limit), 5)
    ids[0, 0], ids[0, -1] = text.config.bos_token_id, text.config.eos_token_id
    long_ids, long_mask, slots = with_suffix_slots(text, ids, torch.ones_like(ids), 4)
    assert long_ids.shape == (1, limit) and int(long_mask.sum()) == limit
    assert long_ids[0, -1].item() == text.config.eos_token_id and slots[0, -5:-1].tolist() == [1, 1, 1, 1]
    assert long_ids[0, : limit - 5].tolist() == ids[0, : limit - 5].tolist()
