"""``safeclip datagen sft|preferences|dpo|generate|images|report|demo``: building ViSU-style training data.

    safeclip datagen demo --out runs/datagen                       # offline, the whole chain in the world
    safeclip datagen sft --config configs/datagen-llama2-7b-chat.yaml --pairs curated.jsonl --out runs/sft

See docs/datagen.md for the full recipe on real models (Llama-2-7B-chat, the paper's SDXL image model).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from safeclip.datagen.dpo import DPOSettings
from safeclip.datagen.sft import SFTSettings


def _field_help(cls) -> dict[str, str]:
    """The one-line ``# help`` comment after each field of a settings dataclass."""
    import inspect
    import re

    found = re.findall(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$", inspect.getsource(cls), flags=re.M)
    return dict(found)


def _add_settings(parser: argparse.ArgumentParser, cls) -> None:
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        default = f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                                metavar="BOOL", help=f"{helps.get(f.name, f.name)} (default {default})")
        else:
            parser.add_argument(flag, type=type(default), default=None,
                                help=f"{helps.get(f.name, f.name)} (default {default})".replace("%", "%%"))
    parser.add_argument("--config", help="YAML recipe (configs/datagen-*.yaml); flags override it")


def _settings(args: argparse.Namespace, cls, section: str):
    import yaml

    values: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config {path} not found (shipped recipes: configs/datagen-*.yaml)")
        data = yaml.safe_load(path.read_text()) or {}
        values.update(data.get(section) or {})
        if not getattr(args, "model", None) and data.get("model"):
            args.model = data["model"]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {section} settings {sorted(unknown)} in {args.config}; known: {sorted(names)}")
    for name in names - {"extra"}:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return cls(**values)


def _load_lm(model: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if cuda else torch.float32)
    except OSError as err:
        raise FileNotFoundError(f"could not load causal LM {model!r}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm.to("cuda" if cuda else "cpu").eval(), tokenizer


def _add_captions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--captions", required=True, help="dataset_coco.json (Karpathy) or a JSONL/CSV of captions")
    p.add_argument("--split", default=None, help="Karpathy split (train = train+restval, val, test)")
    p.add_argument("--caption-key", default=None, help="caption column of a JSONL/CSV (default: caption/safe_text/text)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N captions (0 = all)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling p")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest completion in tokens")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call")
    p.add_argument("--seed", type=int, default=0, help="seed (categories, sampling)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datagen", help="build ViSU-style data: NSFW text generator (SFT, DPO), captions, "
                                   "images, quality report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="datagen_command", metavar="STEP")

    p = steps.add_parser("sft", help="LoRA SFT of a causal LM on curated safe->unsafe pairs (trl)")
    p.add_argument("--model", help="causal LM name or folder (paper: meta-llama/Llama-2-7b-chat-hf)")
    p.add_argument("--pairs", required=True, help="JSONL/CSV with safe_text, unsafe_text, optional category")
    p.add_argument("--out", required=True, help="output folder (adapter/, merged/, meta.json)")
    _add_settings(p, SFTSettings)
    p.set_defaults(func=run_sft_command)

    p = steps.add_parser("preferences", help="sample 2 completions per caption, rank by Eq. 3, write DPO pairs")
    p.add_argument("--model", required=True, help="the SFT model (OUT/merged of `datagen sft`)")
    _add_captions(p)
    _add_sampling(p)
    p.add_argument("--clip", required=True, help="CLIP for CLIP-Sim (paper: openai/clip-vit-large-patch14)")
    p.add_argument("--judge", default="lexicon", help="NSFW judge spec (lexicon, lexicon:PATH, hf:NAME[@LABEL], "
                   "openai:MODEL@BASE_URL; the paper used GPT-3.5)")
    p.add_argument("--no-condition", action="store_true", help="do not name a category in the prompt")
    p.add_argument("--out", required=True, help="output folder (preferences.jsonl)")
    p.set_defaults(func=run_preferences_command)

    p = steps.add_parser("dpo", help="LoRA DPO of the SFT model on ranked pairs (trl)")
    p.add_argument("--model", help="the SFT model (OUT/merged of `datagen sft`)")
    p.add_argument("--pairs", required=True, help="preferences.jsonl from `datagen preferences`")
    p.add_argument("--out", required=True, help="output folder (adapter/, merged/, meta.json)")
    _add_settings(p, DPOSettings)
    p.set_defaults(func=run_dpo_command)

    p = steps.add_parser("generate", help="unsafe captions balanced over the 20 categories (resumable, accelerate)")
    p.add_argument("--model", required=True, help="the generator (OUT/merged of `datagen dpo`)")
    _add_captions(p)
    _add_sampling(p)
    p.add_argument("--no-condition", action="store_true", help="do not name a category in the prompt")
    p.add_argument("--out", required=True, help="output folder (part-<rank>.jsonl, unsafe_captions.jsonl)")
    p.set_defaults(func=run_generate_command)

    p = steps.add_parser("images", help="render v* for each t* with a diffusers pipeline (seeds, NSFW flagger)")
    p.add_argument("--rows", required=True, help="unsafe_captions.jsonl from `datagen generate`")
    p.add_argument("--pipeline", default="stablediffusionapi/newrealityxl-global-nsfw",
                   help="diffusers text-to-image pipeline name or folder (default: the paper's)")
    p.add_argument("--classifier", default="none", help="NSFW image classifier: none, hf:NAME_OR_DIR[@LABEL], nudenet[:THRESHOLD] or "
                   "q16:PROMPTS_FILE@CLIP; comma-separate several (unsafe if any flags)")
    p.add_argument("--seeds", default="1234,1999,8185", help="comma-separated seeds, one image each")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--height", type=int, default=0, help="image height (0 = pipeline default)")
    p.add_argument("--width", type=int, default=0, help="image width (0 = pipeline default)")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows (0 = all)")
    p.add_argument("--out", required=True, help="output folder (images/, images-<rank>.jsonl, quadruplets.jsonl)")
    p.set_defaults(func=run_images_command)

    p = steps.add_parser("report", help="Table 1 quality report: %% NSFW per judge, toxicity, CLIP-Sim(t, t*)")
    p.add_argument("--rows", required=True, help="JSONL/CSV with safe_text, unsafe_text, category")
    p.add_argument("--judge", action="append", default=None, help="judge spec, repeatable (default: lexicon)")
    p.add_argument("--toxicity", default="lexicon", help="toxicity spec (lexicon, hf:NAME[@LABEL]) or none")
    p.add_argument("--clip", default=None, help="CLIP for CLIP-Sim(t, t*) (omit to skip)")
    p.add_argument("--out", required=True, help="output folder (quality.json, quality.md)")
    p.set_defaults(func=run_report_command)

    p = steps.add_parser("demo", help="the whole chain offline in the miniature world; writes table1.json/.md")
    p.add_argument("--out", required=True, help="output folder (stages cached in subfolders)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--size", default="default", help="default (~10 min on 2 CPU cores) or tiny (~1 min)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--world", default=None, help="reuse a built world folder (with --clip) instead of a small new one")
    p.add_argument("--clip", default=None, help="reuse the base CLIP trained on --world (e.g. DEMO/base)")
    p.set_defaults(func=run_demo_command)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_sft_command(args: argparse.Namespace) -> int:
    from safeclip.datagen.sft import read_pairs, run_sft

    settings = _settings(args, SFTSettings, "sft")
    if not args.model:
        raise ValueError("give --model (a causal LM name or folder) or a --config with a model: line")
    print(f"SFT adapter and merged model: {run_sft(args.model, read_pairs(args.pairs), args.out, settings)}")
    return 0


def run_dpo_command(args: argparse.Namespace) -> int:
    from safeclip.data.quadruplets import read_rows
    from safeclip.datagen.dpo import run_dpo

    settings = _settings(args, DPOSettings, "dpo")
    if not args.model:
        raise ValueError("give --model (the SFT model folder) or a --config with a model: line")
    if not Path(args.pairs).is_file():
        raise FileNotFoundError(f"pairs file {args.pairs} not found; run `safeclip datagen preferences` first")
    print(f"DPO adapter and merged model: {run_dpo(args.model, read_rows(Path(args.pairs)), args.out, settings)}")
    return 0


def _captions(args):
    from safeclip.datagen.generate import read_captions

    rows = read_captions(args.captions, split=args.split, key=args.caption_key)
    return rows[:args.limit] if args.limit else rows


def run_preferences_command(args: argparse.Namespace) -> int:
    import torch

    from safeclip.datagen.generate import assign_categories
    from safeclip.datagen.preferences import make_preferences
    from safeclip.datagen.sft import write_jsonl
    from safeclip.judges import build_judge
    from safeclip.models.clip import load_clip

    judge = build_judge(args.judge)
    rows = _captions(args)
    clip = load_clip(args.clip)
    lm, tokenizer = _load_lm(args.model)
    torch.manual_seed(args.seed)
    categories = [None] * len(rows) if args.no_condition else assign_categories(len(rows), args.seed)
    pairs = make_preferences(lm, tokenizer, [r["safe_text"] for r in rows], categories, clip, judge,
                             batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p,
                             max_new_tokens=args.max_new_tokens)
    path = write_jsonl(Path(args.out) / "preferences.jsonl", pairs)
    print(f"{len(pairs)} preference pairs from {len(rows)} captions (ties dropped): {path}")
    return 0


def run_generate_command(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from safeclip.datagen.generate import generate_dataset, hf_generator, merge_parts

    state = PartialState()
    rows = _captions(args)
    lm, tokenizer = _load_lm(args.model)
    lm.to(state.device)
    torch.manual_seed(args.seed + state.process_index)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}
    part = generate_dataset(rows, args.out, hf_generator(lm, tokenizer, **sampling), seed=args.seed,
                            batch_size=args.batch_size, condition=not args.no_condition,
                            rank=state.process_index, world_size=state.num_processes)
    print(f"rank {state.process_index}: {part}")
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"unsafe captions: {merge_parts(args.out, rows)}")
    return 0


def run_images_command(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from safeclip.data.quadruplets import read_rows
    from safeclip.datagen.images import build_image_flagger, diffusers_renderer, generate_images, merge_image_parts

    if not Path(args.rows).is_file():
        raise FileNotFoundError(f"rows file {args.rows} not found; run `safeclip datagen generate` first")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError as err:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from err
    rows = read_rows(Path(args.rows))
    rows = rows[:args.limit] if args.limit else rows
    state = PartialState()
    flagger = build_image_flagger(args.classifier)
    render = diffusers_renderer(args.pipeline, steps=args.steps, guidance_scale=args.guidance,
                                height=args.height or None, width=args.width or None, device=str(state.device))
    generate_images(rows, args.out, render, flagger, seeds=seeds, rank=state.process_index,
                    world_size=state.num_processes)
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"quadruplets: {merge_image_parts(args.out, rows)}")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from safeclip.data.quadruplets import read_rows
    from safeclip.datagen.quality import format_quality_markdown, quality_report, write_quality
    from safeclip.judges import build_judge, build_toxicity

    if not Path(args.rows).is_file():
        raise FileNotFoundError(f"rows file {args.rows} not found")
    judges = [build_judge(s) for s in (args.judge or ["lexicon"])]
    toxicity = None if args.toxicity == "none" else build_toxicity(args.toxicity)
    clip = None
    if args.clip:
        from safeclip.models.clip import load_clip

        clip = load_clip(args.clip)
    report = quality_report(read_rows(Path(args.rows)), judges, toxicity, clip)
    path = write_quality(args.out, report)
    print(format_quality_markdown(report))
    print(f"report: {path}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from safeclip.datagen.demo import run_datagen_demo

    run_datagen_demo(args.out, seed=args.seed, size=args.size, progress=not args.no_progress, world_dir=args.world,
                     clip_dir=args.clip)
    return 0
