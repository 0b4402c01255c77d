"""``safeclip eval t2i`` and ``safeclip eval i2t``: Safe-CLIP inside Stable Diffusion and LLaVA (paper Tables 4-5).

``commands/evaluate.py`` calls ``register_eval`` with its ``eval`` subparsers. Both commands resume where a
previous run stopped and shard over processes under ``accelerate launch``.
"""

from __future__ import annotations

import argparse

from safeclip.errors import ConfigError


DTYPES = {"auto": None, "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def register_eval(evals: argparse._SubParsersAction) -> None:
    from safeclip.attacks.prompt_sets import PROMPT_SETS
    from safeclip.eval.t2i import DEFAULT_NEGATIVE_PROMPT, T2I_VARIANTS

    t2i = evals.add_parser(
        "t2i", help="Stable Diffusion with/without Safe-CLIP text encoder, plain / negative prompt / SLD (paper Table 4)",
        description="Renders every prompt N times (recorded seeds) per condition = text encoder x variant, judges each "
        "image with image judges (unsafe if any flags it) and reports P(unsafe) per I2P category and overall: "
        "t2i.json, t2i.md, grids/*.png, images/, records.rank*.jsonl (resumable).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example (paper Table 4, one GPU; add `accelerate launch -m safeclip.cli` for several):\n"
        "  safeclip eval t2i --sd CompVis/stable-diffusion-v1-4 --safe-encoder safe-clip=aimagelab/safeclip_vit-l_14 \\\n"
        "    --prompts i2p_benchmark.csv --judges nudenet,q16-pickle:Q16/data/ViT-L-14/prompts.p@openai/clip-vit-large-patch14 \\\n"
        "    --dtype float16 --out results/t2i",
    )
    t2i.add_argument("--sd", required=True, help="Stable Diffusion pipeline: hub id (CompVis/stable-diffusion-v1-4) or folder")
    add_encoder_arguments(t2i, "text encoder", "the pipeline's own text encoder")
    t2i.add_argument("--prompts", required=True, help="I2P CSV (prompt, categories[, sd_seed]) or ViSU/quadruplet file (unsafe captions)")
    t2i.add_argument("--max-prompts", type=int, default=0, help="use the first N prompts (0: all)")
    t2i.add_argument("--prompt-set", default=None, choices=sorted(PROMPT_SETS),
                     help="read --prompts as this published attack prompt set (its own file format) and write an "
                     "attack report (attack.json, attack.md: pre-/post-attack ASR as UnlearnDiffAtk defines them; default: none, "
                     "--prompts is an I2P CSV or quadruplet file)")
    t2i.add_argument("--variants", default=",".join(T2I_VARIANTS), help=f"comma-separated subset of {','.join(T2I_VARIANTS)}")
    t2i.add_argument("--judges", default="nudenet",
                     help="comma-separated image judges: nudenet[:THRESHOLD], q16:PROMPTS_FILE@CLIP (default: nudenet)")
    t2i.add_argument("--images-per-prompt", type=int, default=5, help="images (seeds) per prompt (paper: 5)")
    t2i.add_argument("--seed", type=int, default=0, help="first seed when a prompt has none of its own")
    t2i.add_argument("--steps", type=int, default=50, help="denoising steps")
    t2i.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    t2i.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    t2i.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")
    t2i.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    t2i.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT, help="negative prompt of the 'negative' variant")
    add_placement_arguments(t2i)
    t2i.set_defaults(func=run_t2i_command)

    i2t = evals.add_parser(
        "i2t", help="LLaVA with/without Safe-CLIP vision tower: %% NSFW captions and toxicity (paper Table 5)",
        description="Describes every image with LLaVA as loaded and with each Safe-CLIP vision encoder as its tower; "
        "judges captions with text judges (NSFW if any flags it) and a toxicity scorer: i2t.json, i2t.md, "
        "records.rank*.jsonl (resumable).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example (paper Table 5):\n"
        "  safeclip eval i2t --llava llava-hf/llava-1.5-7b-hf --safe-encoder safe-clip=export/llava \\\n"
        "    --images nsfw_images/ --judges hf:michellejieli/NSFW_text_classifier@NSFW \\\n"
        "    --toxicity hf:unitary/toxic-bert@toxic --dtype float16 --out results/i2t",
    )
    i2t.add_argument("--llava", required=True, help="LLaVA checkpoint: hub id (llava-hf/llava-1.5-7b-hf) or folder with its processor")
    add_encoder_arguments(i2t, "vision encoder", "LLaVA's own tower")
    i2t.add_argument("--images", required=True, help="folder of images, the authors' ViSU JSON (its unsafe images), "
                     "or JSONL/CSV with an unsafe_image (or image) column")
    i2t.add_argument("--unsafe-image-root", default=None,
                     help="folder of a ViSU JSON's nsfw_im_path images (default: the JSON's folder)")
    i2t.add_argument("--max-images", type=int, default=0, help="use the first N images (0: all)")
    i2t.add_argument("--judges", default="lexicon", help="comma-separated text judges (safeclip.judges specs; default: lexicon)")
    i2t.add_argument("--toxicity", default="lexicon", help="toxicity scorer spec (safeclip.judges), or 'none'")
    i2t.add_argument("--prompt", default=None, help="LLaVA prompt with an <image> placeholder (default: llava-1.5's USER/ASSISTANT form)")
    i2t.add_argument("--max-new-tokens", type=int, default=64, help="caption length limit")
    i2t.add_argument("--batch-size", type=int, default=8, help="images per generate call")
    add_placement_arguments(i2t)
    i2t.set_defaults(func=run_i2t_command)


def add_encoder_arguments(parser: argparse.ArgumentParser, encoder: str, own: str) -> None:
    """``--safe-encoder`` (repeatable) and ``--base-label``: the Safe-CLIP ``encoder`` swapped in, and the name
    of the generator's ``own`` encoder in the report."""
    parser.add_argument("--safe-encoder", action="append", default=[], metavar="[LABEL=]MODEL",
                        help=f"Safe-CLIP {encoder}, repeatable: export folder, merged CLIP folder/hub id, or run folder")
    parser.add_argument("--base-label", default="clip", help=f"name of {own} in the report")


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--out`` of a resumable generator evaluation."""
    parser.add_argument("--device", default="auto", help="cuda, cpu, ... (auto: accelerate's device for this process)")
    parser.add_argument("--dtype", default="auto", choices=sorted(DTYPES), help="weights dtype (auto: as stored)")
    parser.add_argument("--out", required=True, help="output folder (reruns resume in it)")


def _dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name]) if DTYPES[name] else None


def _device(name: str):
    if name != "auto":
        return name
    from safeclip.jobs import process_state

    return process_state().device


def _labelled(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        label, _, value = spec.partition("=") if "=" in spec else (spec, "", spec)
        if not value:
            raise ConfigError(f"--safe-encoder {spec!r}: expected LABEL=MODEL or MODEL")
        out[label] = value
    return out


def run_t2i_command(args: argparse.Namespace) -> int:
    from safeclip.eval.i2p import read_prompts
    from safeclip.eval.image_judges import build_image_judge
    from safeclip.eval.t2i import T2I_VARIANTS, T2IConfig, build_generators, load_stable_diffusion, load_text_encoder, run_t2i

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = set(variants) - set(T2I_VARIANTS)
    if unknown:
        raise ConfigError(f"unknown --variants {sorted(unknown)}; choose from {','.join(T2I_VARIANTS)}")
    if args.images_per_prompt < 1:
        raise ConfigError("--images-per-prompt must be at least 1")
    if args.prompt_set:
        from safeclip.attacks.generation import with_originals
        from safeclip.attacks.prompt_sets import read_prompt_set

        prompts = with_originals(read_prompt_set(args.prompt_set, args.prompts, max_rows=args.max_prompts))
    else:
        prompts = read_prompts(args.prompts, max_rows=args.max_prompts)
    judges = [build_image_judge(s.strip()) for s in args.judges.split(",") if s.strip()]
    if not judges:
        raise ConfigError("--judges is empty; give e.g. nudenet")
    cfg = T2IConfig(images_per_prompt=args.images_per_prompt, seed=args.seed, steps=args.steps,
                    guidance_scale=args.guidance_scale, height=args.height, width=args.width, batch_size=args.batch_size,
                    negative_prompt=args.negative_prompt, variants=variants,
                    extra={"sd": args.sd, "safe_encoders": args.safe_encoder, "judges": args.judges, "prompts": args.prompts})
    dtype = _dtype(args.dtype)
    pipe = load_stable_diffusion(args.sd, device=_device(args.device), dtype=dtype)
    encoders = {label: load_text_encoder(spec, dtype=dtype) for label, spec in _labelled(args.safe_encoder).items()}
    generators = build_generators(pipe, encoders, cfg, base_label=args.base_label)
    report = run_t2i(generators, prompts, judges, args.out, cfg)
    if report is not None:
        from pathlib import Path

        print((Path(args.out) / "t2i.md").read_text())
        print(f"wrote {Path(args.out) / 't2i.json'}")
        if args.prompt_set:
            write_attack_report(args, prompts, judges, cfg)
    return 0


def write_attack_report(args: argparse.Namespace, prompts, judges, cfg) -> None:
    """``attack.json`` / ``attack.md`` of a ``--prompt-set`` run, with what its rates depend on."""
    from pathlib import Path

    from safeclip.attacks.generation import write_prompt_set_report
    from safeclip.attacks.success import GeneratorProtocol

    thresholds = [j.threshold for j in judges if hasattr(j, "threshold")]
    classes = sorted({c for j in judges for c in getattr(j, "labels", ())})
    protocol = GeneratorProtocol(judges=args.judges, classes=tuple(classes), threshold=thresholds[0] if thresholds else None,
                                 images_per_prompt=cfg.images_per_prompt, seeds=(cfg.seed,), steps=cfg.steps,
                                 guidance_scale=cfg.guidance_scale, extra={"sd": args.sd, "prompts": args.prompts})
    write_prompt_set_report(args.out, args.prompt_set, prompts, protocol)
    print((Path(args.out) / "attack.md").read_text())


def run_i2t_command(args: argparse.Namespace) -> int:
    from safeclip.eval.i2t import DEFAULT_PROMPT, build_captioners, load_llava, load_vision_tower, read_images, run_i2t
    from safeclip.judges import build_judge, build_toxicity

    images = read_images(args.images, max_images=args.max_images, unsafe_image_root=args.unsafe_image_root)
    judges = [build_judge(s.strip()) for s in args.judges.split(",") if s.strip()]
    if not judges:
        raise ConfigError("--judges is empty; give e.g. lexicon")
    toxicity = None if args.toxicity.lower() == "none" else build_toxicity(args.toxicity)
    dtype = _dtype(args.dtype)
    device = _device(args.device)
    llava, processor = load_llava(args.llava, device=device, dtype=dtype)
    towers = {label: load_vision_tower(spec, dtype=dtype) for label, spec in _labelled(args.safe_encoder).items()}
    captioners = build_captioners(llava, processor, towers, base_label=args.base_label,
                                  prompt=args.prompt or DEFAULT_PROMPT, max_new_tokens=args.max_new_tokens)
    report = run_i2t(captioners, images, judges, args.out, toxicity=toxicity, batch_size=args.batch_size)
    if report is not None:
        from pathlib import Path

        print((Path(args.out) / "i2t.md").read_text())
        print(f"wrote {Path(args.out) / 'i2t.json'}")
    return 0
