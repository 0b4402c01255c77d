"""``safeclip export``: write a trained Safe-CLIP model in the layouts other tools load."""

from __future__ import annotations

import argparse

from safeclip.export.targets import DEFAULT_TARGETS, EXPORT_TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write adapters, a merged HF CLIP folder, a diffusers text encoder, a LLaVA vision tower",
        description="Exports a Safe-CLIP model: --model is a run folder (its base + best adapters), a merged CLIP "
        "folder or hub id; --adapters applies an adapter folder to --model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Targets:\n  adapters   LoRA adapters alone (reversible safety: apply to / remove from the base)\n"
        "  hf         Hugging Face CLIP folder (CLIPModel.from_pretrained)\n"
        "  diffusers  the text encoder(s) a Stable Diffusion family loads: SD 1.x every layer, SD 2.x the penultimate\n"
        "             layer with the final layer norm, SDXL text_encoder/ + text_encoder_2/ (--sd-version, --sd-base)\n"
        "  llava      vision_tower/ (CLIPVisionModel + image processor) for LLaVA\n"
        "  openclip   open_clip state dict + config (load with ViT-L-14-quickgelu: OpenAI CLIP uses QuickGELU)\n"
        "  card       README.md model card in each folder (numbers from --results)\n\n"
        "Example:\n  safeclip export --model runs/vit-l-14 --out export/ --targets hf,diffusers\n"
        "  then: StableDiffusionPipeline.from_pretrained('CompVis/stable-diffusion-v1-4',\n"
        "        text_encoder=CLIPTextModel.from_pretrained('export/diffusers/text_encoder'))",
    )
    parser.add_argument("--model", required=True, help="run folder, merged CLIP folder, or hub id")
    parser.add_argument("--adapters", default=None, help="adapter folder to apply to --model (e.g. runs/x/best; default: none, --model as it is)")
    parser.add_argument("--out", required=True, help="output folder; one subfolder per target")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma-separated subset of {','.join(EXPORT_TARGETS)}")
    parser.add_argument("--results", action="append", default=[], help="results JSON to quote in the model card, repeatable")
    parser.add_argument("--sd-version", default="auto", choices=["auto", "1", "2", "xl"],
                        help="Stable Diffusion family of the diffusers export (auto: inferred from the text tower or "
                        "--sd-base where unambiguous, and printed)")
    parser.add_argument("--sd-base", default=None,
                        help="the diffusers pipeline the export plugs into (folder or hub id): its tokenizer, and for "
                        "SDXL its other text encoder, are copied (default: none)")
    parser.add_argument("--data", default="", help="training data to name in the model card (e.g. 'ViSU train, 80k quadruplets')")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safeclip.export import export_model
    from safeclip.models.resolve import resolve_model

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bundle = resolve_model(args.model, adapters=args.adapters)
    for target, path in export_model(bundle, args.out, targets, results=args.results, data=args.data,
                                     sd_version=args.sd_version, sd_base=args.sd_base).items():
        print(f"{target}: {path}")
    return 0
