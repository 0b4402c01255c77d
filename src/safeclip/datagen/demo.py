"""Offline proof of the ViSU data-generation chain in the miniature world: ``safeclip datagen demo --out DIR``.

Stages (each cached in its own subfolder of DIR, rerunning skips finished ones):
  world/  clip/   the offline world and its base CLIP (``safeclip.world``), CLIP-Sim's text encoder
  lm/             a tiny GPT-2 trained on *safe* captions only (stand-in for a chat LLM)
  sft/            LoRA SFT (trl) on 100 curated world pairs, 5 per category, prompt names the category
  preferences/    2 sampled completions per train caption ranked by Eq. 3 with the world CLIP + lexicon judge
  dpo/            LoRA DPO (trl) on those pairs
  table1.json/.md NSFW rate, CLIP-Sim(t, t*) and Eq. 3 rank of base / SFT / DPO on held-out test captions
  generated/      balanced, resumable generation with the DPO model; images/ world renderer stands in for
                  diffusion (v* = t's scene with the category marker over its first object, 3 seeds, kept by a CLIP flagger);
                  quality.md (Table 1 columns per category); diffusers/ a tiny random diffusers pipeline (wiring)

    safeclip datagen demo --out runs/datagen            # ~10 min on 2 CPU cores
    safeclip datagen demo --out runs/datagen-tiny --size tiny
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.config import Settings, section, setting
from safeclip.datagen.dpo import DPOSettings, run_dpo
from safeclip.datagen.engines import complete, hf_generator
from safeclip.datagen.generate import assign_categories, generate_dataset, merge_parts
from safeclip.datagen.images import generate_images, merge_image_parts
from safeclip.datagen.preferences import clip_similarity, eq3_rank, make_preferences
from safeclip.datagen.prompts import format_prompt
from safeclip.datagen.quality import quality_report, write_quality
from safeclip.datagen.sft import SFTSettings, run_sft, write_jsonl
from safeclip.datagen.world_lm import WorldLMSettings, pretrain_world_lm
from safeclip.eval.report import markdown_table
from safeclip.errors import ConfigError, DataError, MissingFileError
from safeclip.timing import StageClock
from safeclip.world.build import WorldSize
from safeclip.world.categories import CATEGORIES, MARKERS, PHRASES
from safeclip.world.pretrain import PretrainSettings


@dataclass
class DatagenDemoSize(Settings):
    """How big the demo is (default: ~10 minutes on 2 CPU cores; ``tiny`` for tests). A settings tree of
    :mod:`safeclip.config`; each stage's seed is the run's seed."""

    world: WorldSize = section(lambda: WorldSize(n_train=2000, n_val=50, n_test=300, n_found=20, n_distractors=20),
                               "Sizes of the world's splits and pools.")
    clip: PretrainSettings = section(lambda: PretrainSettings(epochs=3, batch_size=128, hidden_size=64, num_layers=2,
                                                              intermediate_size=128, projection_dim=64),
                                     "The world's base CLIP (CLIP-Sim's text encoder, the image flagger).")
    lm: WorldLMSettings = section(lambda: WorldLMSettings(steps=1500, batch_size=32, n_embd=128),
                                  "The safe-only stand-in LM.")
    sft: SFTSettings = section(lambda: SFTSettings(lora_r=16, lora_alpha=32, batch_size=8, lr=3e-3, max_steps=300,
                                                   target_modules="c_attn,c_proj,c_fc"), "LoRA SFT on the curated pairs.")
    n_preference_captions: int = setting(300, "Train captions sampled twice by the SFT model.", ge=1)
    dpo: DPOSettings = section(lambda: DPOSettings(lora_r=8, lora_alpha=16, beta=0.1, batch_size=16, lr=2e-3,
                                                   max_steps=80, target_modules="c_attn,c_proj,c_fc"),
                               "LoRA DPO on the preference pairs.")
    n_eval: int = setting(200, "Held-out test captions in Table 1.", ge=1)
    n_generate: int = setting(60, "Captions turned into a quadruplet set with the DPO model.", ge=1)
    temperature: float = setting(0.7, "Sampling temperature for preferences, Table 1 and generation.", gt=0.0)


def tiny_size() -> DatagenDemoSize:
    """A smoke-test size: about a minute on 2 CPU cores."""
    lora = {"lora_r": 4, "lora_alpha": 8, "batch_size": 8, "lr": 5e-3, "target_modules": "c_attn,c_proj,c_fc"}
    return DatagenDemoSize(world=WorldSize(n_train=200, n_val=10, n_test=40, n_found=4, n_distractors=4),
                           clip=PretrainSettings(epochs=1, batch_size=64, hidden_size=32, num_layers=1,
                                                 intermediate_size=64, projection_dim=32),
                           lm=WorldLMSettings(steps=30, n_embd=32, n_layer=1),
                           sft=SFTSettings(**lora, max_steps=4), n_preference_captions=24,
                           dpo=DPOSettings(**lora, max_steps=2), n_eval=20, n_generate=6)


SIZES = {"default": DatagenDemoSize, "tiny": tiny_size}


def curated_pairs(train_rows: list[dict], per_category: int = 5, seed: int = 0) -> list[dict]:
    """``per_category`` world (safe_text, unsafe_text, category) pairs per category (paper: 100 in all)."""
    rng = random.Random(f"curated:{seed}")
    by_category: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    for r in train_rows:
        by_category[r["category"]].append(r)
    pairs = []
    for c in CATEGORIES:
        if len(by_category[c]) < per_category:
            raise DataError(f"the world has {len(by_category[c])} train rows of {c!r}, fewer than {per_category}")
        for r in rng.sample(by_category[c], per_category):
            pairs.append({"id": r["id"], "safe_text": r["safe_text"], "unsafe_text": r["unsafe_text"], "category": c})
    return pairs


def evaluate_generator(model_dir: Path, captions: list[str], categories: list[str], clip_bundle, judge, *,
                       temperature: float, seed: int) -> tuple[dict, list[str]]:
    """Table-1 row: % NSFW (judge), mean CLIP-Sim(t, t*) and mean Eq. 3 rank of one sample per caption."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    prompts = [format_prompt(c, k) for c, k in zip(captions, categories)]
    outs = []
    for start in range(0, len(prompts), 64):
        outs += complete(model, tokenizer, prompts[start:start + 64], temperature=temperature)
    sims = clip_similarity(clip_bundle, captions, outs)
    nsfw = judge(outs)
    ranks = eq3_rank(sims, nsfw)
    return {"nsfw_rate": 100.0 * sum(nsfw) / len(outs), "clip_sim": float(sims.mean()),
            "rank": float(ranks.mean())}, outs


def world_renderer(world_dir: Path):
    """Stand-in for diffusion: t's scene (the row's ``attributes``) drawn anew with the seed, its first object
    covered by the marker of the category t* names; the safe image when t* names none."""
    from PIL import Image

    from safeclip.world.build import scene_from_attributes
    from safeclip.world.scenes import render as render_scene

    def detect(text: str) -> str | None:
        lowered = f" {text.lower()} "
        return next((c for c, phrases in PHRASES.items() for p in phrases if f" {p} " in lowered), None)

    def render(prompt: str, seed: int, row: dict):
        category = detect(prompt)
        if category is None:
            return Image.open(world_dir / row["safe_image"]).convert("RGB")
        return render_scene(scene_from_attributes(row["attributes"]), random.Random(seed), marker=MARKERS[category])

    return render


def clip_flagger(clip_bundle, safe_texts: dict[str, str]):
    """Zero-shot image flagger: P(t* | image) against (t, t*) with the world CLIP."""
    from safeclip.models.clip import encode_images, encode_texts

    def flag(images, prompts):
        safe = safe_texts[prompts[0]]
        text = torch.nn.functional.normalize(encode_texts(clip_bundle.text, clip_bundle.tokenizer, [safe, prompts[0]]), dim=-1)
        image = torch.nn.functional.normalize(encode_images(clip_bundle.vision, clip_bundle.image_processor, images), dim=-1)
        return (clip_bundle.logit_scale * image @ text.T).softmax(-1)[:, 1].tolist()

    return flag


def tiny_diffusers_pipeline(clip_bundle):
    """A randomly initialised Stable Diffusion pipeline around the world CLIP text encoder (wiring only)."""
    from safeclip.models.clip import quiet_transformers

    with quiet_transformers():  # diffusers' import names transformers' image processors (torchvision notice)
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextModel

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers' construction notices, for this block only
    try:
        text_encoder = CLIPTextModel(clip_bundle.text.config)
        getattr(text_encoder, "text_model", text_encoder).load_state_dict(
            getattr(clip_bundle.text, "text_model", clip_bundle.text).state_dict())
        torch.manual_seed(0)
        hidden = text_encoder.config.hidden_size
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=hidden,
                                    attention_head_dim=8, norm_num_groups=8)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                            latent_channels=4, norm_num_groups=8, sample_size=16)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_bundle.tokenizer, unet=unet,
                                       scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    finally:
        diffusers_logging.set_verbosity(level)


def format_table1(rows: dict) -> str:
    return markdown_table("model", ["NSFW rate (%)", "CLIP-Sim(t, t*)", "rank (Eq. 3)"],
                          {name: [r["nsfw_rate"], f"{r['clip_sim']:.3f}", f"{r['rank']:.3f}"] for name, r in rows.items()})


def run_datagen_demo(out: str | os.PathLike, *, seed: int = 0, size: DatagenDemoSize | str | None = None,
                     progress: bool = True, world_dir: str | os.PathLike | None = None,
                     clip_dir: str | os.PathLike | None = None) -> dict:
    """Run every stage into ``out``; returns the ``table1.json`` content.

    ``world_dir`` and ``clip_dir`` reuse an already built world (``safeclip world build``) and its base CLIP
    (``safeclip world pretrain``, or ``base/`` of ``safeclip demo``) instead of building small ones.
    """
    with datasets_progress_bars(progress):
        return _run_stages(out, seed=seed, size=size, progress=progress, world_dir=world_dir, clip_dir=clip_dir)


@contextlib.contextmanager
def datasets_progress_bars(enabled: bool):
    """``datasets``' progress bars off inside the block when not ``enabled``; the caller's setting is restored."""
    from datasets.utils import logging as datasets_logging

    before = datasets_logging.is_progress_bar_enabled()
    if not enabled:
        datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before and not enabled:
            datasets_logging.enable_progress_bar()


def _demo_size(size: DatagenDemoSize | str | None) -> tuple[DatagenDemoSize, str]:
    """The size object and the name the reproduce command gives it."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ConfigError(f"unknown demo size {size!r}; choose one of {sorted(SIZES)}")
        return SIZES[size](), size
    return size or DatagenDemoSize(), "custom" if size else "default"


def _merged_done(folder: Path) -> bool:
    return (folder / "meta.json").is_file() and (folder / "merged" / "config.json").is_file()


def _world_and_clip(out: Path, size: DatagenDemoSize, seed: int, progress: bool, world_dir, clip_dir) -> tuple[Path, Path]:
    """Stage 1: the given world and base CLIP, or small new ones in ``out/world`` and ``out/clip``."""
    from safeclip.world import build_world, pretrain_base

    print(f"[datagen demo] 1/7 world and base CLIP -> {out / 'world'}, {out / 'clip'}", flush=True)
    if (world_dir is None) != (clip_dir is None):
        raise ConfigError("give both --world and --clip (a world and the base CLIP trained on it) or neither")
    if world_dir is not None:
        world = Path(world_dir)
        if not (world / "world.json").is_file():
            raise MissingFileError(f"{world} is not a built world (no world.json); run `safeclip world build`")
        return world, Path(clip_dir)
    world = Path(build_world(out / "world", seed=seed, progress=progress, **asdict(size.world)))
    return world, Path(pretrain_base(world, out / "clip", progress=progress, **{**asdict(size.clip), "seed": seed}))


def _preference_pairs(out: Path, size: DatagenDemoSize, seed: int, progress: bool, train_rows: list[dict],
                      pairs: list[dict], clip, judge) -> list[dict]:
    """Stage 4: two SFT samples per unused train caption, ranked by Eq. 3 (``out/preferences``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeclip.data.quadruplets import read_rows

    prefs_path = out / "preferences" / "preferences.jsonl"
    if not prefs_path.is_file():
        used = {p["id"] for p in pairs}
        rng = random.Random(f"prefs:{seed}")
        pool = [r for r in train_rows if r["id"] not in used]
        chosen = rng.sample(pool, min(size.n_preference_captions, len(pool)))
        sft_model = AutoModelForCausalLM.from_pretrained(out / "sft" / "merged").eval()
        sft_tok = AutoTokenizer.from_pretrained(out / "sft" / "merged")
        torch.manual_seed(seed)
        prefs = make_preferences(sft_model, sft_tok, [r["safe_text"] for r in chosen],
                                 assign_categories(len(chosen), seed + 1), clip, judge,
                                 temperature=size.temperature, progress=progress, samples_dir=out / "preferences")
        write_jsonl(prefs_path, prefs)
    return read_rows(prefs_path)


def _table1(out: Path, size: DatagenDemoSize, seed: int, test_rows: list[dict], generators: dict, clip, judge,
            command: str, facts: dict) -> dict:
    """Stage 6: Table 1 (NSFW rate, CLIP-Sim, Eq. 3 rank) of each generator on held-out test captions;
    writes ``table1.json`` / ``table1.md`` and returns the rows."""
    eval_rows = test_rows[:size.n_eval]
    captions = [r["safe_text"] for r in eval_rows]
    categories = assign_categories(len(eval_rows), seed + 2)
    table, samples = {}, {}
    for name, folder in generators.items():
        table[name], samples[name] = evaluate_generator(Path(folder), captions, categories, clip, judge,
                                                        temperature=size.temperature, seed=seed)
    examples = [{"safe_text": c, "category": k, **{n: samples[n][i] for n in samples}}
                for i, (c, k) in enumerate(zip(captions[:8], categories[:8]))]
    result = {"rows": table, "n_eval": len(eval_rows), "n_preference_pairs": facts["n_preference_pairs"],
              "judge": judge.name, "clip": facts["clip"], "temperature": size.temperature, "seed": seed,
              "command": command, "size": asdict(size), "examples": examples}
    write_json_atomic(out / "table1.json", result)
    md = ["# Table 1 in the miniature world", "", f"`{command}`", "",
          f"{len(eval_rows)} held-out test captions, one sample each (temperature {size.temperature}), category "
          "requested in the prompt; NSFW by the world lexicon judge; CLIP-Sim by the world's base CLIP text "
          "encoder; rank = CLIP-Sim + NSFW (Eq. 3). Paper (Llama 2, GPT-3.5 judge): 9.3% -> 75.0% -> 79.1%.", "",
          format_table1(table), "## Examples", "", "| t | category | base | sft | dpo |", "|---|---|---|---|---|"]
    md += [f"| {e['safe_text']} | {e['category']} | {e['base']} | {e['sft']} | {e['dpo']} |" for e in examples]
    write_text_atomic(out / "table1.md", "\n".join(md) + "\n")
    return table


def _generated_set(out: Path, size: DatagenDemoSize, seed: int, progress: bool, world: Path, test_rows: list[dict],
                   clip, judge) -> tuple[dict, Path]:
    """Stage 7: captions from the DPO model, images by the world renderer kept by the CLIP flagger, the
    quality report (``out/generated``) and the diffusers wiring rows (``out/diffusers``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeclip.data.quadruplets import read_rows
    from safeclip.judges import build_toxicity

    start = size.n_eval - size.n_generate if size.n_eval >= size.n_generate else 0
    gen_rows = [{"id": r["id"], "safe_text": r["safe_text"], "safe_image": r["safe_image"], "attributes": r["attributes"]}
                for r in test_rows[start:][:size.n_generate]]
    dpo_model = AutoModelForCausalLM.from_pretrained(out / "dpo" / "merged").eval()
    dpo_tok = AutoTokenizer.from_pretrained(out / "dpo" / "merged")
    torch.manual_seed(seed)
    generate_dataset(gen_rows, out / "generated", hf_generator(dpo_model, dpo_tok, temperature=size.temperature),
                     seed=seed, rank=0, world_size=1, progress=progress)
    generated = read_rows(merge_parts(out / "generated", gen_rows))
    by_id = {r["id"]: r for r in gen_rows}  # rows left out by the completion filter are not in generated
    for g in generated:
        g["safe_image"], g["attributes"] = by_id[g["id"]]["safe_image"], by_id[g["id"]]["attributes"]
    generate_images(generated, out / "generated", world_renderer(world),
                    clip_flagger(clip, {g["unsafe_text"]: g["safe_text"] for g in generated}),
                    rank=0, world_size=1, progress=progress)
    merge_image_parts(out / "generated", generated)
    report = quality_report(generated, [judge], build_toxicity("lexicon"), clip)
    write_quality(out / "generated", report)
    wiring = generate_images(generated[:2], out / "diffusers", _tiny_renderer(clip), lambda ims, ps: [1.0] * len(ims),
                             seeds=(1234,), rank=0, world_size=1, progress=False)
    return report, wiring


def _run_stages(out: str | os.PathLike, *, seed: int = 0, size: DatagenDemoSize | str | None = None,
                progress: bool = True, world_dir: str | os.PathLike | None = None,
                clip_dir: str | os.PathLike | None = None) -> dict:
    """The seven stages of :func:`run_datagen_demo`, in order, each timed."""
    from safeclip.data.quadruplets import read_rows
    from safeclip.judges import build_judge
    from safeclip.models.clip import load_clip

    size, size_name = _demo_size(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock("datagen demo")
    seconds, stage = clock.seconds, clock.stage

    world, clip_dir = _world_and_clip(out, size, seed, progress, world_dir, clip_dir)
    clip = load_clip(clip_dir)
    judge = build_judge("lexicon")
    train_rows, test_rows = read_rows(world / "train.jsonl"), read_rows(world / "test.jsonl")
    stage("world+clip")

    print(f"[datagen demo] 2/7 safe-only LM -> {out / 'lm'}", flush=True)
    all_captions = [r["safe_text"] for r in train_rows] + [r["unsafe_text"] for r in train_rows]
    lm_dir = pretrain_world_lm([r["safe_text"] for r in train_rows], all_captions, out / "lm",
                               replace(size.lm, seed=seed), progress=progress)
    stage("lm")

    print(f"[datagen demo] 3/7 SFT on 100 curated pairs -> {out / 'sft'}", flush=True)
    pairs = curated_pairs(train_rows, seed=seed)
    if not _merged_done(out / "sft"):
        write_jsonl(out / "sft" / "pairs.jsonl", pairs)
        run_sft(lm_dir, pairs, out / "sft", replace(size.sft, seed=seed), progress=progress)
    stage("sft")

    print(f"[datagen demo] 4/7 preference pairs (Eq. 3) -> {out / 'preferences'}", flush=True)
    prefs = _preference_pairs(out, size, seed, progress, train_rows, pairs, clip, judge)
    stage("preferences")

    print(f"[datagen demo] 5/7 DPO on {len(prefs)} pairs -> {out / 'dpo'}", flush=True)
    if not _merged_done(out / "dpo"):
        run_dpo(out / "sft" / "merged", prefs, out / "dpo", replace(size.dpo, seed=seed), progress=progress)
    stage("dpo")

    print("[datagen demo] 6/7 Table 1 on held-out test captions", flush=True)
    command = f"safeclip datagen demo --out {shlex.quote(str(out))} --seed {seed} --size {size_name}"
    if world_dir is not None:
        command += f" --world {shlex.quote(str(world))} --clip {shlex.quote(str(clip_dir))}"
    generators = {"base": lm_dir, "sft": out / "sft" / "merged", "dpo": out / "dpo" / "merged"}
    table = _table1(out, size, seed, test_rows, generators, clip, judge, command,
                    {"n_preference_pairs": len(prefs), "clip": str(clip_dir)})
    stage("table1")

    print(f"[datagen demo] 7/7 dataset, images and quality report -> {out / 'generated'}", flush=True)
    report, wiring = _generated_set(out, size, seed, progress, world, test_rows, clip, judge)
    stage("generate+images+report")
    write_json_atomic(out / "timing.json", {**seconds, "total": sum(seconds.values())})
    print(format_table1(table))
    print(f"[datagen demo] generated set quality: NSFW {report['overall']['nsfw_rate[lexicon]']:.1f}%, "
          f"CLIP-Sim {report['overall']['clip_sim']:.3f}; diffusers wiring rows: {len(wiring.read_text().splitlines())}")
    print(f"[datagen demo] total {sum(seconds.values()):.0f} s; table: {out / 'table1.md'}")
    return json.loads((out / "table1.json").read_text())


def _tiny_renderer(clip_bundle):
    from safeclip.datagen.images import diffusers_renderer

    return diffusers_renderer(tiny_diffusers_pipeline(clip_bundle), steps=2, height=32, width=32, device="cpu")
