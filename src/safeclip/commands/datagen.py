"""``safeclip datagen sft|preferences|dpo|generate|images|report|demo``: building ViSU-style training data.

    safeclip datagen demo --out runs/datagen                       # offline, the whole chain in the world
    safeclip datagen sft --config configs/datagen-llama2-7b-chat.yaml --pairs curated.jsonl --out runs/sft

See docs/datagen.md for the full recipe on real models (Llama-2-7B-chat, the paper's SDXL image model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safeclip.commands.options import add_settings_arguments, settings_from_args
from safeclip.config import read_settings_file
from safeclip.datagen.dpo import DPOSettings
from safeclip.datagen.generate import CaptionSource, GenerationSettings, SamplingSettings
from safeclip.datagen.sft import SFTSettings
from safeclip.errors import ConfigError, MissingFileError
from safeclip.judges import LLMJudgeSettings


def _add_settings(parser: argparse.ArgumentParser, cls, section: str | None = None) -> None:
    """One flag per field of ``cls``; with ``section``, also ``--config`` (a recipe whose ``section:`` and
    ``model:`` line the flags override)."""
    if section:
        parser.add_argument("--config", help=f"YAML recipe (configs/datagen-*.yaml): its '{section}:' section and "
                            "its 'model:' line; flags override it (default: none, the settings' defaults)")
    add_settings_arguments(parser, cls)


def _settings(args: argparse.Namespace, cls, section: str):
    """``cls`` from its defaults, the ``section`` of ``--config`` and the flags; ``args.model`` defaults to the
    recipe's ``model:`` line."""
    if getattr(args, "config", None) and not getattr(args, "model", None):
        args.model = read_settings_file(args.config).get("model")
    return settings_from_args(args, cls, section=section)


JUDGE_HELP = ("NSFW judge, required: openai:MODEL@BASE_URL (the paper: GPT-3.5), hf:NAME_OR_DIR[@LABEL] (a text "
              "classifier) or lexicon:PATH; plain 'lexicon' is the offline world's word list, for world data only")


def _add_generator_inputs(p: argparse.ArgumentParser, sampling_cls) -> None:
    p.add_argument("--model", required=True, help="the generator: a `datagen sft`/`datagen dpo` output folder (its "
                   "base with the LoRA adapter applied), or a model folder / hub name")
    _add_settings(p, CaptionSource)
    _add_settings(p, sampling_cls)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datagen", help="build ViSU-style data: NSFW text generator (SFT, DPO), captions, "
                                   "images, quality report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="datagen_command", metavar="STEP")

    p = steps.add_parser("sft", help="LoRA SFT of a causal LM on curated safe->unsafe pairs (trl)")
    p.add_argument("--model", help="causal LM name or folder (paper: meta-llama/Llama-2-7b-chat-hf; default: the --config recipe's model: line)")
    p.add_argument("--pairs", required=True, help="JSONL/CSV with safe_text, unsafe_text, optional category")
    p.add_argument("--out", required=True, help="output folder (adapter/, merged/, meta.json)")
    _add_settings(p, SFTSettings, "sft")
    p.set_defaults(func=run_sft_command)

    p = steps.add_parser("preferences", help="sample 2 completions per caption, rank by Eq. 3, write DPO pairs")
    _add_generator_inputs(p, SamplingSettings)
    p.add_argument("--clip", required=True, help="CLIP for CLIP-Sim (paper: openai/clip-vit-large-patch14)")
    p.add_argument("--judge", required=True, help=JUDGE_HELP)
    _add_settings(p, LLMJudgeSettings)
    p.add_argument("--out", required=True, help="output folder (samples-0.jsonl written before scoring, "
                   "judge_cache.jsonl, preferences.jsonl)")
    p.set_defaults(func=run_preferences_command)

    p = steps.add_parser("dpo", help="LoRA DPO of the SFT model on ranked pairs (trl)")
    p.add_argument("--model", help="the SFT model (OUT/merged of `datagen sft`; default: the --config recipe's model: line)")
    p.add_argument("--pairs", required=True, help="preferences.jsonl from `datagen preferences`")
    p.add_argument("--out", required=True, help="output folder (adapter/, merged/, meta.json)")
    _add_settings(p, DPOSettings, "dpo")
    p.set_defaults(func=run_dpo_command)

    p = steps.add_parser("generate", help="unsafe captions balanced over the 20 categories (resumable, accelerate)")
    _add_generator_inputs(p, GenerationSettings)
    p.add_argument("--out", required=True, help="output folder (part-<rank>.jsonl, unsafe_captions.jsonl, "
                   "generation_report.json)")
    p.set_defaults(func=run_generate_command)

    p = steps.add_parser("images", help="render v* for each t* with a diffusers pipeline (seeds, NSFW flagger)")
    p.add_argument("--rows", required=True, help="unsafe_captions.jsonl from `datagen generate`")
    p.add_argument("--pipeline", default="stablediffusionapi/newrealityxl-global-nsfw",
                   help="diffusers text-to-image pipeline name or folder (the paper's model)")
    p.add_argument("--classifier", default="none", help="NSFW image classifier: none, hf:NAME_OR_DIR[@LABEL], nudenet[:THRESHOLD] or "
                   "q16:PROMPTS_FILE@CLIP; comma-separate several (unsafe if any flags); route by category with "
                   "';' (the paper's judges: 'sexual,nudity=nudenet;q16:PROMPTS_FILE@CLIP')")
    p.add_argument("--seeds", default="1234,1999,8185", help="comma-separated seeds, one image each")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--height", type=int, default=0, help="image height (0 = pipeline default)")
    p.add_argument("--width", type=int, default=0, help="image width (0 = pipeline default)")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows (0 = all)")
    p.add_argument("--image-format", default="png", choices=["png", "jpeg", "webp"],
                   help="file format of the kept images (jpeg/webp at quality 95 take about a tenth of png's space)")
    p.add_argument("--out", required=True, help="output folder (images/, images-<rank>.jsonl, quadruplets.jsonl, "
                   "images_report.json)")
    p.set_defaults(func=run_images_command)

    p = steps.add_parser("report", help="Table 1 quality report: %% NSFW per judge, toxicity, CLIP-Sim(t, t*)")
    p.add_argument("--rows", required=True, help="JSONL/CSV with safe_text, unsafe_text, category")
    p.add_argument("--judge", action="append", required=True, help=JUDGE_HELP + "; repeatable")
    _add_settings(p, LLMJudgeSettings)
    p.add_argument("--toxicity", required=True, help="toxicity scorer: hf:NAME[@LABEL] (the paper: the Perspective "
                   "API), lexicon:PATH, none; plain 'lexicon' is for world data only")
    p.add_argument("--adult-classifier", default=None, metavar="NAME_OR_DIR[@LABEL]",
                   help="the text classifier that plays the paper's DistilBERT adult-content judge (the paper names "
                        "no checkpoint: give the model id you use; default: none, no such judge)")
    p.add_argument("--image-judge", action="append", default=None, help="image judge for rows with unsafe_image "
                   "(Table 7): nudenet[:THRESHOLD] or q16:PROMPTS_FILE@CLIP; repeatable (default: none, no image columns judged)")
    p.add_argument("--clip", default=None, help="CLIP for CLIP-Sim(t, t*) and, with images, CLIP-Sim(v*, t*) (default: none, no CLIP-Sim columns)")
    p.add_argument("--out", required=True, help="output folder (quality.json, quality.md)")
    p.set_defaults(func=run_report_command)

    p = steps.add_parser("demo", help="the whole chain offline in the miniature world; writes table1.json/.md")
    p.add_argument("--out", required=True, help="output folder (stages cached in subfolders)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--size", default="default", help="default (~10 min on 2 CPU cores) or tiny (~1 min)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--world", default=None, help="reuse a built world folder (with --clip) instead of a small new one (default: none, build one)")
    p.add_argument("--clip", default=None, help="reuse the base CLIP trained on --world (e.g. DEMO/base; default: none, train one)")
    p.set_defaults(func=run_demo_command)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_sft_command(args: argparse.Namespace) -> int:
    from safeclip.datagen.sft import read_pairs, run_sft

    settings = _settings(args, SFTSettings, "sft")
    if not args.model:
        raise ConfigError("give --model (a causal LM name or folder) or a --config with a model: line")
    print(f"SFT adapter and merged model: {run_sft(args.model, read_pairs(args.pairs), args.out, settings)}")
    return 0


def run_dpo_command(args: argparse.Namespace) -> int:
    from safeclip.data.quadruplets import read_rows
    from safeclip.datagen.dpo import run_dpo

    settings = _settings(args, DPOSettings, "dpo")
    if not args.model:
        raise ConfigError("give --model (the SFT model folder) or a --config with a model: line")
    if not Path(args.pairs).is_file():
        raise MissingFileError(f"pairs file {args.pairs} not found; run `safeclip datagen preferences` first")
    print(f"DPO adapter and merged model: {run_dpo(args.model, read_rows(Path(args.pairs)), args.out, settings)}")
    return 0


def run_preferences_command(args: argparse.Namespace) -> int:
    from safeclip.datagen.engines import load_causal_lm
    from safeclip.datagen.generate import assign_categories, load_captions
    from safeclip.datagen.preferences import make_preferences
    from safeclip.datagen.sft import write_jsonl
    from safeclip.judges import build_judge
    from safeclip.models.clip import load_clip

    import torch

    source, sampling = _settings(args, CaptionSource, "captions"), _settings(args, SamplingSettings, "sampling")
    llm = _settings(args, LLMJudgeSettings, "judge")
    llm.cache = llm.cache or str(Path(args.out) / "judge_cache.jsonl")
    judge = build_judge(args.judge, llm)
    rows = load_captions(source)
    clip = load_clip(args.clip)
    lm, tokenizer = load_causal_lm(args.model, dtype=sampling.dtype)
    torch.manual_seed(sampling.seed)
    categories = assign_categories(len(rows), sampling.seed) if sampling.condition else [None] * len(rows)
    pairs = make_preferences(lm, tokenizer, [r["safe_text"] for r in rows], categories, clip, judge,
                             batch_size=sampling.batch_size, temperature=sampling.temperature, top_p=sampling.top_p,
                             max_new_tokens=sampling.max_new_tokens, samples_dir=args.out)
    path = write_jsonl(Path(args.out) / "preferences.jsonl", pairs)
    print(f"{len(pairs)} preference pairs from {len(rows)} captions (ties and unreadable verdicts dropped): {path}")
    return 0


def build_engine(model: str, settings: GenerationSettings, device: str | None = None):
    """The ``prompts -> completions`` engine ``settings.engine`` names, loaded from ``model``."""
    from safeclip.datagen.engines import hf_engine, vllm_engine

    if settings.engine == "hf":
        return hf_engine(model, device=device, dtype=settings.dtype, batch_size=settings.batch_size,
                         temperature=settings.temperature, top_p=settings.top_p,
                         max_new_tokens=settings.max_new_tokens)
    if settings.engine == "vllm":
        return vllm_engine(model, temperature=settings.temperature, top_p=settings.top_p,
                           max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    raise ConfigError(f"unknown engine {settings.engine!r}; use hf or vllm")


def run_generate_command(args: argparse.Namespace) -> int:
    import torch

    from safeclip.datagen.generate import caption_job, generate_dataset, load_captions, merge_parts, parse_shard

    source, settings = _settings(args, CaptionSource, "captions"), _settings(args, GenerationSettings, "generate")
    rank, world_size = parse_shard(settings.shard)
    job = caption_job(args.out, rank=rank, world_size=world_size)
    rows = load_captions(source)
    device = str(job.state.device) if job.state is not None else None
    torch.manual_seed(settings.seed + job.rank)
    part = generate_dataset(rows, args.out, build_engine(args.model, settings, device), seed=settings.seed,
                            batch_size=settings.batch_size, condition=settings.condition, retries=settings.retries,
                            rank=job.rank, world_size=job.world_size)
    print(f"rank {job.rank}: {part}")
    job.wait_for_everyone()
    if job.is_main or job.state is None:
        try:
            print(f"unsafe captions: {merge_parts(args.out, rows)}")
        except ValueError as err:  # other shards still running: the last one to finish merges
            print(f"not merged yet: {err}")
    return 0


def run_images_command(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from safeclip.data.quadruplets import read_rows
    from safeclip.datagen.images import build_image_flagger, diffusers_renderer, generate_images, merge_image_parts

    if not Path(args.rows).is_file():
        raise MissingFileError(f"rows file {args.rows} not found; run `safeclip datagen generate` first")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError as err:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from err
    rows = read_rows(Path(args.rows))
    rows = rows[:args.limit] if args.limit else rows
    state = PartialState()
    flagger = build_image_flagger(args.classifier)
    render = diffusers_renderer(args.pipeline, steps=args.steps, guidance_scale=args.guidance,
                                height=args.height or None, width=args.width or None, device=str(state.device))
    generate_images(rows, args.out, render, flagger, seeds=seeds, image_format=args.image_format,
                    rank=state.process_index, world_size=state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"quadruplets: {merge_image_parts(args.out, rows)}")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from safeclip.data.quadruplets import read_rows
    from safeclip.datagen.quality import format_quality_markdown, quality_report, write_quality
    from safeclip.judges import build_judge, build_toxicity

    if not Path(args.rows).is_file():
        raise MissingFileError(f"rows file {args.rows} not found")
    llm = _settings(args, LLMJudgeSettings, "judge")
    llm.cache = llm.cache or str(Path(args.out) / "judge_cache.jsonl")
    judges = [build_judge(s, llm) for s in args.judge]
    roles = {}
    if args.adult_classifier:
        adult = build_judge(f"hf:{args.adult_classifier}")
        judges.append(adult)
        roles[adult.name] = "the paper's DistilBERT adult-content classifier"
    roles.update({j.name: "the paper's GPT-3.5 judge" for j in judges if j.name.startswith("openai:")})
    toxicity = None if args.toxicity == "none" else build_toxicity(args.toxicity)
    image_judges = []
    if args.image_judge:
        from safeclip.eval.image_judges import build_image_judge

        image_judges = [build_image_judge(s) for s in args.image_judge]
    clip = None
    if args.clip:
        from safeclip.models.clip import load_clip

        clip = load_clip(args.clip)
    report = quality_report(read_rows(Path(args.rows)), judges, toxicity, clip, image_judges=image_judges,
                            image_root=Path(args.rows).parent, roles=roles)
    path = write_quality(args.out, report)
    print(format_quality_markdown(report))
    print(f"report: {path}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from safeclip.datagen.demo import run_datagen_demo

    run_datagen_demo(args.out, seed=args.seed, size=args.size, progress=not args.no_progress, world_dir=args.world,
                     clip_dir=args.clip)
    return 0
