"""``safeclip world build|pretrain``: the offline miniature ViSU world and its base CLIP.

    safeclip world build --out world --n-train 2000
    safeclip world pretrain --world world --out base --epochs 2 --hidden-size 64
"""

from __future__ import annotations

import argparse

from safeclip.commands.options import add_settings_arguments, settings_from_args
from safeclip.errors import MissingFileError
from safeclip.world.build import WorldSize
from safeclip.world.pretrain import PretrainSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("world", help="the offline miniature ViSU world (build data, pretrain a base CLIP)",
                                   description="A small world of procedural scenes with captions and, for the "
                                   "paper's 20 NSFW categories, unsafe counterparts (phrases in t*, markers in v*).")
    commands = parser.add_subparsers(dest="world_command", metavar="STEP")
    build = commands.add_parser("build", help="write train/val/test quadruplets, found-unsafe pool and distractors",
                                description="Deterministic from --seed; a folder already built with the same "
                                "settings is reused. Output: DIR/{train,val,test,found_unsafe,distractors}.jsonl, "
                                "DIR/images/, DIR/world.json.")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--seed", type=int, default=0, help="world seed (scenes, categories, splits)")
    build.add_argument("--config", help="YAML file of sizes (n_train: ..., ...); flags override it (default: none, the defaults below)")
    add_settings_arguments(build, WorldSize)
    build.set_defaults(func=run_build)

    pretrain = commands.add_parser("pretrain", help="train the world's base CLIP from scratch on safe + unsafe pairs",
                                   description="Standard CLIP contrastive training of a small HF CLIPModel with a "
                                   "BPE tokenizer trained on the world's captions; saved as a Hugging Face CLIP folder.")
    pretrain.add_argument("--world", required=True, help="a folder written by `safeclip world build`")
    pretrain.add_argument("--out", required=True, help="output folder (a Hugging Face CLIP folder)")
    pretrain.add_argument("--config", help="YAML file of pretraining settings (epochs: ..., ...); flags override it (default: none, the defaults below)")
    add_settings_arguments(pretrain, PretrainSettings)
    pretrain.set_defaults(func=run_pretrain)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_build(args: argparse.Namespace) -> int:
    from safeclip.world import build_world

    from dataclasses import asdict

    sizes = settings_from_args(args, WorldSize)
    print(f"world: {build_world(args.out, seed=args.seed, **asdict(sizes))}")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safeclip.world import pretrain_base

    if not (Path(args.world) / "world.json").is_file():
        raise MissingFileError(f"{args.world} is not a built world (no world.json); run `safeclip world build --out {args.world}` first")
    from dataclasses import asdict

    settings = settings_from_args(args, PretrainSettings)
    out = pretrain_base(args.world, args.out, **asdict(settings))
    print(f"base CLIP: {out}")
    return 0
