"""``safeclip attack``: white-box attacks on a safe CLIP, scored by the Safe-CLIP retrieval protocol.

    safeclip attack --model runs/tiny --data world/test.jsonl --attack gcg --budget tokens=8,steps=20 --out attacks/
    safeclip attack --model runs/tiny --base world/base --data world/test.jsonl --attack gcg,pgd,transfer --out attacks/

Writes ``attack.json`` and ``attack.md`` (the definition of success, the budget, NSFW@1 before and after).
"""

from __future__ import annotations

import argparse

from safeclip.commands.evaluate import FORMATS
from safeclip.errors import ConfigError, MissingFileError


def register(subparsers: argparse._SubParsersAction) -> None:
    from safeclip.attacks.retrieval import ATTACKS, AttackBudget
    from safeclip.attacks.success import RETRIEVAL_DEFINITION
    from safeclip.config import describe_settings

    parser = subparsers.add_parser(
        "attack", help="attack a safe CLIP (gcg, pez, transfer on its text encoder; pgd on its vision encoder)",
        description="Attacks every unsafe query of the test quadruplets and scores it with the Safe-CLIP retrieval "
        f"protocol. {RETRIEVAL_DEFINITION} Writes attack.json and attack.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Budget keys (--budget key=value,...; a bare number is tokens for a token attack and eps for pgd):\n"
        f"{describe_settings(AttackBudget)}\nExample:\n"
        "  safeclip attack --model compare/methods/safe-clip/run --base compare/base --data compare/world/test.jsonl \\\n"
        "    --attack gcg,pgd,transfer --budget tokens=8,eps=4 --out attacks/safe-clip",
    )
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", help="the attacked model: CLIP folder or hub id, or a run folder (default: none; give --model or --compare)")
    models.add_argument("--compare", help="a finished `safeclip compare` folder: attack its base and every method on "
                        "its test split (--data and --base default to the folder's)")
    parser.add_argument("--size", default="default", choices=["default", "tiny"],
                        help="with --compare: the size the compare ran at (default or tiny)")
    parser.add_argument("--adapters", default=None, help="adapters applied to --model (a run's best/ folder; default: none)")
    parser.add_argument("--base", default=None, help="the base model (needed by transfer and target=base; default: none, or the --compare folder's base)")
    parser.add_argument("--data", default=None, help="test quadruplets with all four modalities (JSONL/CSV, ViSU; default: none, or the --compare folder's test split)")
    parser.add_argument("--image-root", default="", help="folder relative image paths start from")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="input format")
    parser.add_argument("--attack", default="gcg", help=f"comma-separated attacks: {', '.join(ATTACKS)}")
    parser.add_argument("--budget", default="", help="key=value,... (the keys below; default: every key's default)")
    parser.add_argument("--max-rows", type=int, default=0, help="use only the first N quadruplets (0: all)")
    parser.add_argument("--queries", type=int, default=0,
                        help="attack the first N unsafe queries against the gallery of every quadruplet (0: all)")
    parser.add_argument("--out", required=True, help="output folder (attack.json, attack.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safeclip.attacks.retrieval import ATTACKS, attack_retrieval, parse_budget, write_attack_report
    from safeclip.data import read_quadruplets
    from safeclip.models.resolve import resolve_model

    attacks = [a.strip() for a in args.attack.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ConfigError(f"--attack {args.attack!r}: choose from {', '.join(ATTACKS)} (comma-separated)")
    for name in ("max_rows", "queries"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    budgets = {a: parse_budget(args.budget, a) for a in attacks}
    if args.base is None and not args.compare and any(a == "transfer" or b.target == "base" for a, b in budgets.items()):
        raise ConfigError("--attack transfer and target=base need --base (the model the safe one was made from)")
    models, data, base_spec = _models(args)
    records, report = read_quadruplets(data, fmt=args.format, image_root=args.image_root or None, max_rows=args.max_rows)
    print(report.summary())
    base = resolve_model(base_spec) if base_spec else None
    reports = []
    for label, bundle in models:
        for attack in attacks:
            print(f"[attack] {label} {attack}: {budgets[attack].describe(attack)} on {args.queries or len(records)} "
                  "unsafe queries", flush=True)
            reports.append(attack_retrieval(bundle, records, attack, budgets[attack], base=base, model=label,
                                           queries=args.queries))
            print(f"[attack] {label} {attack}: NSFW@1 {reports[-1]['asr_before']:.1f}% before, ASR "
                  f"{reports[-1]['asr']:.1f}% after ({reports[-1]['seconds']:.0f} s)", flush=True)
    json_path, md_path = write_attack_report(reports, Path(args.out))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def _models(args: argparse.Namespace):
    """``(models, data, base)``: an iterator of ``(label, bundle)`` and the data and base they are attacked with."""
    import copy
    import json
    from pathlib import Path

    from safeclip.models.resolve import resolve_model

    if args.model:
        if not args.data:
            raise ConfigError("--data is required with --model (the test quadruplets to attack)")
        return iter([(args.model, resolve_model(args.model, adapters=args.adapters))]), args.data, args.base
    from safeclip.compare import SIZES, compared_models

    folder = Path(args.compare)
    if not (folder / "compare.json").is_file():
        raise MissingFileError(f"--compare {folder}: no compare.json there; give the --out folder of a finished "
                               "safeclip compare run (with --seeds: one of its seed-N folders)")
    sources = json.loads((folder / "compare.json").read_text())["sources"]
    return (compared_models(folder, copy.deepcopy(SIZES[args.size])), args.data or sources["test"],
            args.base or sources["base"])
