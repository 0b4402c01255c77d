"""``safeclip compare``: base CLIP vs Safe-CLIP vs SafeR-CLIP vs UWM with the same data, budget and metrics."""

from __future__ import annotations

import argparse
import sys

from safeclip.config import seed_list
from safeclip.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="run the base model and every safety method with the same data and budget; one table of all metrics",
        description="Offline by default: builds (or reuses) the miniature world and base CLIP in DIR, runs each method "
        "(safe-clip, safer-clip, uwm) into DIR/methods/<name>, evaluates every model with the Safe-CLIP retrieval protocol, "
        "the SafeR-CLIP T*->V protocol, SafeGround and zero-shot accuracy, and writes DIR/compare.json, DIR/compare.md and "
        "DIR/safety_utility.png. With --base/--train/--test it runs on real data and backbones instead (GPU; docs/compare.md).",
        epilog=method_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="compare", help="output folder (default: compare)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, base model and every method")
    parser.add_argument("--seeds", type=seed_list, default=[], help="comma-separated seeds: one run per seed in DIR/seed-N, "
                        "then DIR/compare_seeds.json / .md with mean ± std")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to run (space- or comma-separated; default: safe-clip safer-clip uwm; also hysac, which "
                        "adds the row hysac+traversal; 'base' is always evaluated)")
    parser.add_argument("--size", default="default", choices=["default", "tiny"],
                        help="world/base/budget size: default (~15 min on 2 cores) or tiny (a smoke test)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of every trained method (default: the --size budget, 3 for default, 2 for tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="quadruplets per step of every trained method (default: the --size budget, 128 for default, 32 for tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a method setting, e.g. safer-clip:relative_scale=5, uwm:sparsity=0.99, "
                        "safe-clip:loss.temperature=0.01 (repeatable)")
    real = parser.add_argument_group("real data (skips the offline world)")
    real.add_argument("--base", default=None, help="base CLIP: hub id or folder, e.g. openai/clip-vit-large-patch14 (default: none, the offline world's base)")
    real.add_argument("--train", default=None, help="training quadruplets (ViSU JSON or a quadruplet JSONL/CSV; default: none, the offline world)")
    real.add_argument("--val", default=None, help="validation quadruplets (Safe-CLIP model selection; default: none, no validation)")
    real.add_argument("--test", default=None, help="test quadruplets for every metric (default: none, the offline world)")
    real.add_argument("--zero-shot-folder", default=None, help="labelled images as folder/<class>/<image> for zero-shot accuracy (default: none, no zero-shot row)")
    parser.set_defaults(func=run)


def method_settings_help() -> str:
    """Every method's settings with their defaults, for ``--set METHOD:KEY=VALUE``."""
    from safeclip.config import describe_settings
    from safeclip.methods.safe_clip import recipe_config
    from safeclip.methods.safer_clip import SaferClipConfig
    from safeclip.methods.uwm import UwmConfig

    return "\n".join([
        "Method settings (--set METHOD:KEY=VALUE; the budget flags and the data/model/run keys are set by compare):",
        "safe-clip: any `safeclip train` key, defaults from its recipe src/safeclip/recipes/demo.yaml "
        "(config=PATH replaces the recipe):", describe_settings(recipe_config(), "safe-clip:"),
        "safer-clip:", describe_settings(SaferClipConfig, "safer-clip:"),
        "uwm:", describe_settings(UwmConfig, "uwm:")])


def run(args: argparse.Namespace) -> int:
    import copy

    from safeclip.compare import SIZES, Sources, run_compare, run_compare_seeds
    from safeclip.methods.base import DEFAULT_METHODS, METHOD_NAMES

    methods = tuple(m for item in (args.methods or list(DEFAULT_METHODS)) for m in item.split(",") if m)
    size = copy.deepcopy(SIZES[args.size])
    if args.epochs is not None:
        size.budget.epochs = args.epochs
    if args.batch_size is not None:
        size.budget.batch_size = args.batch_size
    for item in args.set:
        method, sep, setting = item.partition(":")
        if not sep or method not in METHOD_NAMES or "=" not in setting:
            raise ConfigError(f"--set {item!r}: write METHOD:KEY=VALUE with METHOD one of {', '.join(METHOD_NAMES)}")
        size.method_overrides.setdefault(method, []).append(setting)
    sources = None
    if args.base or args.train or args.test:
        if not (args.base and args.train and args.test):
            raise ConfigError("real-data mode needs all of --base, --train and --test")
        sources = Sources(base=args.base, train=args.train, val=args.val, test=args.test,
                          zero_shot_folder=args.zero_shot_folder)
    kwargs = dict(methods=methods, size=size, sources=sources, progress=sys.stderr.isatty())
    if args.seeds:
        run_compare_seeds(args.out, args.seeds, **kwargs)
    else:
        run_compare(args.out, seed=args.seed, command="safeclip " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else "", **kwargs)
    return 0
