"""``safeclip demo``: the whole pipeline in the offline miniature world (the README's main job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from safeclip.config import seed_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the offline world, train a small CLIP, make it safe with Safe-CLIP, evaluate, report",
        description="Runs every stage of Safe-CLIP offline on a 2-core CPU in minutes: world -> base CLIP -> "
        "Safe-CLIP fine-tuning -> retrieval evaluation (paper Table 2 protocol) -> merged model + report. "
        "Writes DIR/results.json, DIR/results.md, DIR/report.md (+ pictures), DIR/model/ and one folder per stage; "
        "rerunning reuses finished stages and gives the same numbers for the same seed.",
    )
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the base model and the fine-tuning")
    parser.add_argument("--seeds", type=seed_list, default=[], help="comma-separated seeds: run the demo once per seed into DIR/seed-N "
                        "and write DIR/seeds.json and DIR/seeds.md (mean and spread)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safeclip.demo import demo_main

    code = demo_main(args.out, args.seed, args.seeds)
    print_explore_command(args)
    return code


def print_explore_command(args: argparse.Namespace) -> None:
    """The one command that opens the explore page on the demo's own base, Safe-CLIP run and test split."""
    from safeclip.commands.explore import explore_command

    out = Path(args.out) / f"seed-{args.seeds[0]}" if args.seeds else Path(args.out)
    command = explore_command({"base": out / "base", "safe-clip": out / "run"}, out / "world" / "test.jsonl")
    print(f"Try your own queries on both models in the browser:\n  {command}")
