"""The ``safeclip`` command: the only place that reads command-line arguments.

    safeclip --help
    safeclip train --config configs/tiny.yaml data.train=... run.out_dir=runs/x
    safeclip eval retrieval --model runs/x/best --data test.jsonl --out results/

Each command group lives next to the code it drives and registers itself through a
``register(subparsers)`` function listed in ``COMMAND_GROUPS``; the handler it sets as
``func`` receives the parsed ``argparse.Namespace`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from safeclip.errors import UserError  # also importable from here, as before safeclip.errors existed

# Modules that expose ``register(subparsers: argparse._SubParsersAction) -> None``.
COMMAND_GROUPS: list[str] = [
    "safeclip.commands.train",
    "safeclip.commands.evaluate",
    "safeclip.commands.export",
    "safeclip.commands.demo",
    "safeclip.commands.world",
    "safeclip.commands.compare",
    "safeclip.commands.datagen",
    "safeclip.commands.hysac",
    "safeclip.commands.explore",
    "safeclip.commands.attack",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safeclip",
        description="Make CLIP-style models safe (Safe-CLIP, ECCV 2024) and measure it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_GROUPS:
        importlib.import_module(module_name).register(subparsers)
    from safeclip.commands.options import show_defaults

    show_defaults(parser)  # every option's --help line ends with its default
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:  # input the user can fix; anything else is a bug and keeps its traceback
        if os.environ.get("SAFECLIP_DEBUG"):
            raise
        print(f"safeclip {args.command}: error: {err}", file=sys.stderr)
        print("(set SAFECLIP_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
