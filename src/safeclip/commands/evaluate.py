"""``safeclip eval``: evaluation protocols. ``retrieval`` is the Safe-CLIP / HySAC protocol (paper Table 2)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate models (retrieval, generators, NSFW rates)",
                                   description="Evaluation protocols; each output names the protocol it follows.")
    evals = parser.add_subparsers(dest="eval_command", metavar="PROTOCOL")
    retrieval = evals.add_parser(
        "retrieval",
        help="Safe-CLIP retrieval protocol: T->V, V->T, T*->V+V*, V*->T+T* with R@k and NSFW@1",
        description="Cross-modal retrieval on aligned quadruplets (paper Table 2, also HySAC's protocol): safe texts "
        "and images query each other; unsafe texts query V u V* and unsafe images query T u T*, with the paired SAFE "
        "item as ground truth. NSFW@1 = %% of unsafe queries whose top-1 item is unsafe. Writes results.json "
        "({'protocol': 'safe-clip', 'models': {...}}) and results.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  safeclip eval retrieval --data world/test.jsonl --model base=world/base "
        "--model safe-clip=runs/tiny --out results/",
    )
    retrieval.add_argument("--data", required=True, help="test quadruplets (ViSU JSON, ViSU-Text, or quadruplet JSONL/CSV)")
    retrieval.add_argument("--model", action="append", required=True, metavar="[LABEL=]MODEL",
                           help="a model to evaluate, repeatable: a CLIP folder or hub id, or a run folder "
                           "(its base plus best adapters); LABEL names its row (default: the path)")
    retrieval.add_argument("--adapters", action="append", default=[], metavar="LABEL=DIR",
                           help="apply the adapters in DIR to the model labelled LABEL")
    retrieval.add_argument("--out", required=True, help="output folder for results.json and results.md")
    retrieval.add_argument("--image-root", default="", help="folder relative image paths start from (ViSU: the COCO root)")
    retrieval.add_argument("--unsafe-image-root", default="", help="folder for ViSU's nsfw_im_path entries")
    retrieval.add_argument("--format", default="auto", choices=["auto", "visu", "visu-text", "table"], help="input format")
    retrieval.add_argument("--batch-size", type=int, default=256, help="embedding batch size")
    retrieval.add_argument("--max-rows", type=int, default=0, help="evaluate only the first N rows (0: all)")
    retrieval.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad rows instead of failing")
    retrieval.set_defaults(func=run_retrieval)
    if importlib.util.find_spec("safeclip.commands.generators") is not None:
        importlib.import_module("safeclip.commands.generators").register_eval(evals)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def split_label(spec: str) -> tuple[str, str]:
    if "=" in spec:
        label, value = spec.split("=", 1)
        return label, value
    return spec, spec


def run_retrieval(args: argparse.Namespace) -> int:
    from safeclip.data import read_quadruplets
    from safeclip.eval.embed import embed_quadruplets
    from safeclip.eval.retrieval import safe_clip_protocol, write_results
    from safeclip.models.resolve import resolve_model

    records, report = read_quadruplets(args.data, fmt=args.format, image_root=args.image_root or None,
                                       unsafe_image_root=args.unsafe_image_root or None,
                                       skip_bad_rows=args.skip_bad_rows, max_rows=args.max_rows)
    print(report.summary())
    adapters = dict(split_label(a) for a in args.adapters)
    results = {}
    for spec in args.model:
        label, model = split_label(spec)
        bundle = resolve_model(model, adapters=adapters.get(label))
        emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records,
                                batch_size=args.batch_size, progress=True)
        if "safe_image" not in emb:
            raise ValueError(f"{args.data} has no images; the retrieval protocol needs safe images")
        results[label] = safe_clip_protocol(emb["safe_text"], emb["safe_image"], emb.get("unsafe_text"), emb.get("unsafe_image"))
    json_path, md_path = write_results(results, Path(args.out), protocol="safe-clip")
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0
