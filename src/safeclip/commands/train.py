"""``safeclip train``: Safe-CLIP fine-tuning from a YAML config plus ``key=value`` overrides."""

from __future__ import annotations

import argparse

from safeclip.config import describe_config, load_config

EPILOG = """\
Every config key (set it in the YAML file or as section.key=value after the file):
{keys}

Examples:
  safeclip train --config configs/vit-l-14_safe-clip.yaml data.train=visu/train.json data.val=visu/val.json \\
      data.image_root=coco/ data.unsafe_image_root=visu_images/
  safeclip train --config configs/tiny.yaml data.train=world/train.jsonl run.out_dir=runs/tiny
  safeclip train --config configs/tiny.yaml ... run.resume=true        # continue an interrupted run
  accelerate launch --num_processes 8 -m safeclip.cli train --config ...   # multi-GPU
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a CLIP model with Safe-CLIP (LoRA on both encoders)",
        description="Fine-tune both CLIP encoders with LoRA and the four Safe-CLIP losses (paper Eq. 4-7). "
        "Writes a run folder with the resolved config, per-term loss logs, validation metrics, "
        "atomic checkpoints (resume with run.resume=true) and the best adapters in <run>/best/.",
        epilog=EPILOG.format(keys=describe_config()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (shipped examples in configs/); defaults apply when omitted")
    parser.add_argument("--resume", action="store_true", help="same as run.resume=true")
    parser.add_argument("--skip-bad-rows", action="store_true", help="same as data.skip_bad_rows=true")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, applied after --config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.resume:
        overrides.append("run.resume=true")
    if args.skip_bad_rows:
        overrides.append("data.skip_bad_rows=true")
    cfg = load_config(args.config, overrides)
    from safeclip.train import train

    run_dir = train(cfg)
    print(f"run folder: {run_dir}  (best adapters: {run_dir / 'best'})")
    return 0
