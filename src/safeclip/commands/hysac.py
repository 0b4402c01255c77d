"""``safeclip hysac``: HySAC's safety bounds, NSFW classifier, export and the authors' checkpoint import.

    safeclip hysac bounds --model runs/hysac --data world/val.jsonl --out bounds.json [--into]
    safeclip hysac classify --model runs/hysac --val world/val.jsonl --test world/test.jsonl --out nsfw.json
    safeclip hysac export --model runs/hysac --out export/hysac
    safeclip hysac import --checkpoint hysac_model.pth --bounds hysac_bounds.json \\
        --base openai/clip-vit-large-patch14 --out models/hysac
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hysac", help="HySAC: safety bounds, NSFW classifier, export, authors' checkpoint import",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="hysac_command", metavar="ACTION", required=True)

    bounds = sub.add_parser("bounds", help="per modality and side: 5th/95th percentile and mean distance to the origin")
    bounds.add_argument("--model", required=True, help="HySAC run folder or export folder")
    bounds.add_argument("--data", required=True, help="the named split to measure (quadruplets: JSONL/CSV/ViSU)")
    bounds.add_argument("--out", required=True, help="JSON file in the authors' hysac_bounds.json shape {S, U, V, G}")
    bounds.add_argument("--into", action="store_true", help="also store the bounds in the model's hysac.json")
    bounds.add_argument("--batch-size", type=int, default=256, help="items per encoder pass")
    bounds.set_defaults(func=run_bounds)

    classify = sub.add_parser("classify", help="NSFW classifier: threshold on --val, accuracy/FPR/FNR/AUROC on --test")
    classify.add_argument("--model", required=True, help="HySAC model (root distance) or any CLIP (unsafe-prototype baseline)")
    classify.add_argument("--val", required=True, help="quadruplets to choose the threshold on")
    classify.add_argument("--test", required=True, help="quadruplets to report on")
    classify.add_argument("--out", required=True, help="JSON file for the metrics")
    classify.set_defaults(func=run_classify)

    export = sub.add_parser("export", help="merged CLIP folder + hysac.json (curvature, scales, bounds)")
    export.add_argument("--model", required=True, help="HySAC run folder or export folder")
    export.add_argument("--out", required=True, help="output folder")
    export.set_defaults(func=run_export)

    imp = sub.add_parser("import", help="convert the authors' hysac_model.pth (+ hysac_bounds.json) into an export folder")
    imp.add_argument("--checkpoint", required=True, help="the authors' hysac_model.pth (loaded with weights_only=True)")
    imp.add_argument("--bounds", default=None, help="the authors' hysac_bounds.json (default: none, no safety bounds)")
    imp.add_argument("--base", default="openai/clip-vit-large-patch14", help="the CLIP the checkpoint was trained from")
    imp.add_argument("--out", required=True, help="output folder")
    imp.set_defaults(func=run_import)


def embed_split(bundle, path: str, batch_size: int = 256) -> tuple[dict, int]:
    from safeclip.data import read_quadruplets
    from safeclip.eval.embed import embed_quadruplets

    records, _ = read_quadruplets(path)
    return embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records,
                             batch_size=batch_size), len(records)


def run_bounds(args: argparse.Namespace) -> int:
    from safeclip.checkpoint import write_json_atomic
    from safeclip.hysac.model import HYSAC_FILE, load_hysac
    from safeclip.hysac.traversal import compute_bounds

    model = load_hysac(args.model)
    emb, rows = embed_split(model, args.data, args.batch_size)
    bounds = compute_bounds(emb, model.curvature())
    write_json_atomic(args.out, bounds)
    print(f"bounds of {rows} quadruplets of {args.data} (curvature {model.curvature():.4f}) -> {args.out}")
    for key, stats in bounds.items():
        print(f"  {key}: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    if args.into:
        target = Path(args.model) / HYSAC_FILE
        if not target.is_file():
            target = Path(args.model) / "best" / HYSAC_FILE
        meta = json.loads(target.read_text())
        write_json_atomic(target, {**meta, "bounds": bounds, "bounds_split": str(args.data)})
        print(f"  stored in {target}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from safeclip.checkpoint import write_json_atomic
    from safeclip.hysac.classifier import PROTOCOL, nsfw_classification
    from safeclip.hysac.model import is_hysac, load_hysac
    from safeclip.models.resolve import resolve_model

    model = load_hysac(args.model) if is_hysac(args.model) else resolve_model(args.model)
    curv = model.curvature() if is_hysac(args.model) else None
    val, _ = embed_split(model, args.val)
    test, _ = embed_split(model, args.test)
    metrics = nsfw_classification(val, test, curv=curv)
    write_json_atomic(args.out, {"protocol": PROTOCOL, "score": "root distance" if curv else "unsafe prototype",
                                 "model": str(args.model), "val": str(args.val), "test": str(args.test), "metrics": metrics})
    for modality, entry in metrics.items():
        print(f"{modality}: " + ", ".join(f"{k} {v:.2f}" for k, v in entry.items()))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from safeclip.hysac.model import load_hysac, save_hysac

    print(f"HySAC export -> {save_hysac(load_hysac(args.model), args.out)}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from safeclip.hysac.authors import load_authors_checkpoint
    from safeclip.hysac.model import save_hysac

    model = load_authors_checkpoint(args.checkpoint, args.base, bounds=args.bounds)
    print(f"authors' HySAC (curvature {model.curvature():.4f}) -> {save_hysac(model, args.out)}")
    return 0
