"""``safeclip eval``: evaluation protocols. ``retrieval`` is the Safe-CLIP / HySAC protocol (paper Table 2)."""

from __future__ import annotations

import argparse
import sys
import importlib.util
from pathlib import Path

from safeclip.errors import ConfigError, DataError, MissingFileError


FORMATS = ["auto", "visu", "visu-text", "table", "nsfwcaps"]


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
    add_data_arguments(retrieval, "test quadruplets (ViSU JSON, ViSU-Text, or quadruplet JSONL/CSV)",
                       image_root="folder relative image paths start from (ViSU: the COCO root)")
    add_model_arguments(retrieval, "output folder for results.json and results.md", adapters=True)
    retrieval.add_argument("--unsafe-image-root", default="", help="folder for ViSU's nsfw_im_path entries")
    add_batch_arguments(retrieval, skip_help="skip and count bad rows instead of failing")
    retrieval.set_defaults(func=run_retrieval)
    nsfw = evals.add_parser(
        "nsfw-retrieval",
        help="NSFW retrieval on found images (paper Table 3): %% of queries whose top-1 item is unsafe",
        description="Unsafe texts query unsafe images mixed with safe distractor images (T2I); unsafe images query "
        "unsafe texts mixed with safe distractor texts (I2T). Per source of unsafe images and overall; each source "
        "is queried with the texts of its categories (paper: sexual, nudity for NudeNet and NSFW-URL; the rest for "
        "SMID). The paper uses NudeNet / SMID / NSFW-URL images and 10k LAION distractors. Writes "
        "nsfw_retrieval.json (with each source's query ids and texts) / .md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example (offline world):\n  safeclip eval nsfw-retrieval --queries demo/world/test.jsonl "
        "--unsafe demo/world/found_unsafe.jsonl --distractors demo/world/distractors.jsonl "
        "--model base=demo/base --model safe-clip=demo/run --out results/",
    )
    nsfw.add_argument("--queries", required=True, help="quadruplet file whose unsafe_text column gives the unsafe texts")
    nsfw.add_argument("--unsafe", action="append", required=True, metavar="SOURCE",
                      help="unsafe images, repeatable (one source each): a JSONL with unsafe_image paths, or a folder of images")
    nsfw.add_argument("--distractors", required=True,
                      help="JSONL with safe_image and safe_text columns (safe distractors), paths relative to it")
    nsfw.add_argument("--model", action="append", required=True, metavar="[LABEL=]MODEL", help=MODEL_HELP)
    nsfw.add_argument("--out", required=True, help="output folder")
    nsfw.add_argument("--max-queries", type=int, default=0, help="use the first N unsafe texts (0: all)")
    nsfw.add_argument("--batch-size", type=int, default=256, help="embedding batch size")
    add_compute_arguments(nsfw)
    nsfw.add_argument("--categories", action="append", default=[], metavar="SOURCE=CAT[,CAT...]|SOURCE=all",
                      help="query SOURCE only with the unsafe texts of these categories, repeatable (default: the "
                      "paper's mapping by source name: nudenet / nsfw-url(s) -> sexual, nudity; smid -> every other "
                      "category; any other source -> every text)")
    nsfw.set_defaults(func=run_nsfw_retrieval)
    safer = evals.add_parser(
        "safer-t2v",
        help="SafeR-CLIP T*->V protocol: unsafe texts query a safe-only image gallery (R@1/5/10)",
        description="Each unsafe caption t*_i queries the N safe images only; the ground truth is v_i, the image of "
        "its safe caption. It asks whether a safe model still finds the right safe content for an unsafe query "
        "(SafeR-CLIP reports it on ViSU and on NSFWCaps). Needs safe images and unsafe texts: ViSU, a quadruplet "
        "table, or NSFWCaps rows {image_coco_url, caption, nsfw_caption, chosen_category} with the images fetched "
        "under --image-root. Writes safer_t2v.json ({'protocol': ..., 'models': {...}}) and safer_t2v.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  safeclip eval safer-t2v --data nsfwcaps.json --image-root nocaps_val/ "
        "--model clip=openai/clip-vit-large-patch14 --model safe-clip=runs/vit-l-14 --out results/nsfwcaps\n"
        "  safeclip eval safer-t2v --data demo/world/test.jsonl --model base=demo/base --model safe-clip=demo/run "
        "--out results/safer",
    )
    add_data_arguments(safer, "pairs with safe images and unsafe texts (NSFWCaps, ViSU, table)",
                       image_root="folder of the (fetched) safe images")
    add_model_arguments(safer, "output folder for safer_t2v.json and safer_t2v.md")
    add_batch_arguments(safer, skip_help="skip and count bad rows (e.g. images not fetched)")
    safer.set_defaults(func=run_safer_t2v)
    if importlib.util.find_spec("safeclip.commands.generators") is not None:
        importlib.import_module("safeclip.commands.generators").register_eval(evals)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


MODEL_HELP = ("a model to evaluate, repeatable: a CLIP folder or hub id, or a run folder (its base plus best "
              "adapters); LABEL names its row (default: the path)")


def add_data_arguments(parser: argparse.ArgumentParser, data_help: str, *, image_root: str) -> None:
    """``--data``, ``--image-root`` and ``--format``: the quadruplets an evaluation reads."""
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--image-root", default="", help=image_root)
    parser.add_argument("--format", default="auto", choices=FORMATS, help="input format")


def add_model_arguments(parser: argparse.ArgumentParser, out_help: str, *, adapters: bool = False) -> None:
    """``--model`` (repeatable, labelled), optionally ``--adapters``, and ``--out``."""
    parser.add_argument("--model", action="append", required=True, metavar="[LABEL=]MODEL", help=MODEL_HELP)
    if adapters:
        parser.add_argument("--adapters", action="append", default=[], metavar="LABEL=DIR",
                            help="apply the adapters in DIR to the model labelled LABEL")
    parser.add_argument("--out", required=True, help=out_help)


def add_batch_arguments(parser: argparse.ArgumentParser, *, skip_help: str) -> None:
    """``--batch-size``, ``--max-rows`` and ``--skip-bad-rows``, plus the compute arguments."""
    parser.add_argument("--batch-size", type=int, default=256, help="embedding batch size")
    parser.add_argument("--max-rows", type=int, default=0, help="evaluate only the first N rows (0: all)")
    parser.add_argument("--skip-bad-rows", action="store_true", help=skip_help)
    add_compute_arguments(parser)


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--num-workers``. Under ``torchrun`` / ``accelerate launch`` the embedding is sharded."""
    parser.add_argument("--device", default="auto",
                        help="where the encoders run: auto (this process's GPU when there is one, else the CPU), "
                        "cpu, cuda, cuda:N. Under torchrun / accelerate launch every process embeds a share of "
                        "the images and the first one writes the results")
    parser.add_argument("--num-workers", type=int, default=0, help="loader processes decoding images (real data: 8)")


def compute_settings(args: argparse.Namespace) -> dict:
    """``{"device", "num_workers", "shard"}`` for :func:`safeclip.eval.evaluate` from the compute arguments
    (joins the launcher's process group when there is one)."""
    from safeclip.distributed import join_launched_processes, resolve_device

    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    _, world = join_launched_processes()
    return {"device": resolve_device(args.device), "num_workers": args.num_workers, "shard": world > 1}


def say_share(what: str, rows: int, batch_size: int) -> None:
    """Under a launcher, print which rows this process embeds (``<what>: rank r of P embedded rows a-b of N``)."""
    from safeclip.distributed import world_size
    from safeclip.eval.embed import shard_rows

    if world_size() > 1:
        import torch.distributed as dist

        mine = shard_rows(rows, batch_size, dist.get_rank(), world_size())
        print(f"{what}: rank {dist.get_rank()} of {world_size()} embedded rows {mine.start}-{mine.stop} of {rows}",
              flush=True)


def is_writer() -> bool:
    """Whether this process writes outputs: the only one, or rank 0 of a launched group."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def split_label(spec: str) -> tuple[str, str]:
    if "=" in spec:
        label, value = spec.split("=", 1)
        return label, value
    return spec, spec


def check_labels(specs: list[str], adapters: dict | None) -> None:
    """Each ``--model`` label once; each ``--adapters`` label names a ``--model``."""

    labels = [split_label(spec)[0] for spec in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"--model label(s) {', '.join(twice)} given more than once (one row would overwrite the "
                          "other); give each model its own LABEL=MODEL")
    unknown = sorted(set(adapters or {}) - set(labels))
    if unknown:
        raise ConfigError(f"--adapters label(s) {', '.join(unknown)} match no --model (labels: {', '.join(labels)}); "
                          "write --adapters LABEL=DIR with the LABEL of a --model")


def evaluate_specs(args: argparse.Namespace, records, protocol: str, adapters: dict | None = None):
    """:func:`safeclip.eval.evaluate` of each ``--model`` in turn (one model in memory at a time)."""
    from safeclip.eval.evaluation import EvalResults, evaluate
    from safeclip.models.resolve import resolve_model

    check_labels(args.model, adapters)
    results = EvalResults((protocol,), rows=len(records))
    compute = compute_settings(args)
    say_share(protocol, len(records), args.batch_size)
    for spec in args.model:
        label, model = split_label(spec)
        bundle = resolve_model(model, adapters=(adapters or {}).get(label))
        results.update(evaluate({label: bundle}, records, protocols=(protocol,), batch_size=args.batch_size,
                                progress=is_writer(), **compute))
    return results


def warn_if_few_rows(rows: int) -> None:
    from safeclip.eval.evaluation import MIN_RELIABLE_ROWS

    if rows < MIN_RELIABLE_ROWS:
        print(f"warning: only {rows} test rows: each recall moves in steps of {100 / rows:.3g} points, so these "
              f"numbers say little (use at least {MIN_RELIABLE_ROWS} rows); N is recorded in the results",
              file=sys.stderr)


def run_retrieval(args: argparse.Namespace) -> int:
    from safeclip.data import read_quadruplets
    from safeclip.eval.evaluation import require_modalities

    records, report = read_quadruplets(args.data, fmt=args.format, image_root=args.image_root or None,
                                       unsafe_image_root=args.unsafe_image_root or None,
                                       skip_bad_rows=args.skip_bad_rows, max_rows=args.max_rows)
    print(report.summary())
    require_modalities(("safe-clip",), report.modalities, str(args.data))
    results = evaluate_specs(args, records, "safe-clip", dict(split_label(a) for a in args.adapters))
    if not is_writer():
        return 0
    warn_if_few_rows(len(records))
    json_path, md_path = results.write(Path(args.out))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def run_safer_t2v(args: argparse.Namespace) -> int:
    from safeclip.checkpoint import write_json_atomic, write_text_atomic
    from safeclip.data import read_quadruplets
    from safeclip.eval.evaluation import require_modalities
    from safeclip.eval.report import markdown_table
    from safeclip.eval.safer_protocol import PROTOCOL, SAFER_KS

    records, report = read_quadruplets(args.data, fmt=args.format, image_root=args.image_root or None,
                                       skip_bad_rows=args.skip_bad_rows, max_rows=args.max_rows)
    print(report.summary())
    require_modalities(("safer-t2v",), report.modalities, str(args.data))
    results = {label: m["safer_t2v"] for label, m in evaluate_specs(args, records, "safer-t2v").models.items()}
    if not is_writer():
        return 0
    out = Path(args.out)
    write_json_atomic(out / "safer_t2v.json", {"protocol": PROTOCOL, "data": str(args.data), "n": len(records),
                                               "models": results})
    keys = [f"R@{k}" for k in SAFER_KS]
    table = (f"{PROTOCOL} ({len(records)} pairs of {args.data}), percent.\n\n"
             + markdown_table("model", keys, {label: [r[k] for k in keys] for label, r in results.items()}))
    write_text_atomic(out / "safer_t2v.md", table)
    print(table, end="")
    print(f"wrote {out / 'safer_t2v.json'} and {out / 'safer_t2v.md'}")
    return 0


def _source_categories(spec: str, sources: dict) -> tuple[str, tuple[str, ...] | None]:
    """``--categories SOURCE=cat1,cat2`` (or ``SOURCE=all``) -> (source, categories or None)."""
    source, _, value = spec.partition("=")
    if source not in sources or not value.strip():
        raise ConfigError(f"--categories {spec!r}: expected SOURCE=cat1,cat2 or SOURCE=all with SOURCE one of "
                          f"{', '.join(sources)} (a source is named after its --unsafe file or folder)")
    if value.strip().lower() == "all":
        return source, None
    return source, tuple(c.strip() for c in value.split(",") if c.strip())


def _unsafe_source(spec: str) -> tuple[str, list[Path]]:
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
        if not images:
            raise MissingFileError(f"{path} holds no .png/.jpg/.jpeg/.webp images")
        return path.name, images
    from safeclip.data.quadruplets import read_rows

    if not path.is_file():
        raise MissingFileError(f"unsafe image source {path} does not exist (a JSONL with unsafe_image, or a folder)")
    rows = read_rows(path)
    if not rows or "unsafe_image" not in rows[0]:
        raise DataError(f"{path}: column unsafe_image missing")
    return path.stem, [path.parent / r["unsafe_image"] for r in rows]


def run_nsfw_retrieval(args: argparse.Namespace) -> int:
    from safeclip.data.quadruplets import read_rows, read_unsafe_texts
    from safeclip.eval.nsfw_retrieval import (
        describe_source_queries,
        format_table,
        nsfw_retrieval,
        select_source_queries,
        write_nsfw_retrieval,
    )
    from safeclip.models.resolve import resolve_model

    records, report = read_unsafe_texts(args.queries, max_rows=args.max_queries)
    if is_writer():
        print(f"{args.queries}: {report.rows} query texts" + (f"; {report.skipped_summary()}" if report.skipped else ""))
    texts = [r.unsafe_text for r in records]
    sources = dict(_unsafe_source(s) for s in args.unsafe)
    chosen = dict(_source_categories(spec, sources) for spec in args.categories)
    source_queries = select_source_queries([r.category for r in records], list(sources), chosen)
    queries = describe_source_queries(source_queries, [r.id for r in records], texts)
    for source, q in queries.items():
        if is_writer():
            print(f"{source}: {len(sources[source])} images, queried with {q['count']} texts of categories {q['categories']}")
    distractor_path = Path(args.distractors)
    if not distractor_path.is_file():
        raise MissingFileError(f"distractor file {distractor_path} does not exist")
    distractors = read_rows(distractor_path)
    missing = {"safe_image", "safe_text"} - set(distractors[0]) if distractors else {"safe_image", "safe_text"}
    if missing:
        raise DataError(f"{distractor_path}: column(s) {', '.join(sorted(missing))} missing")
    compute = compute_settings(args)
    say_share("nsfw-retrieval distractors", len(distractors), args.batch_size)
    results = {}
    for spec in args.model:
        label, model = split_label(spec)
        bundle = resolve_model(model)
        bundle.text.to(compute["device"])
        bundle.vision.to(compute["device"])
        results[label] = nsfw_retrieval(bundle, unsafe_texts=texts, unsafe_images=sources,
                                        distractor_texts=[d["safe_text"] for d in distractors],
                                        distractor_images=[distractor_path.parent / d["safe_image"] for d in distractors],
                                        source_queries=source_queries, batch_size=args.batch_size,
                                        num_workers=compute["num_workers"], shard=compute["shard"])
    if not is_writer():
        return 0
    path = write_nsfw_retrieval(results, args.out, queries=queries)
    print(format_table(results))
    print(f"wrote {path}")
    return 0
