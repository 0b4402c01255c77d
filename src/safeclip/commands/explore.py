"""``safeclip explore``: the local web page that compares models on the user's own queries."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from safeclip.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explore",
        help="a local web page putting models side by side on your own text or image queries",
        description="Starts a web page on this machine (127.0.0.1 unless --host) where a text query returns, for every "
        "model side by side, its top-k gallery images, and an uploaded image its top-k gallery captions, with their "
        "similarity, each marked safe or unsafe where the gallery knows it, and the query's NSFW@1. Unsafe images are "
        "blurred by the server until the page's reveal switch is turned on. Gallery embeddings are computed once per "
        "model and cached on disk (keyed by the model's weights and the gallery's files).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example (after `safeclip demo --out demo`):\n  "
        "safeclip explore --model base=demo/base --model safe-clip=demo/run --gallery demo/world/test.jsonl",
    )
    parser.add_argument("--model", action="append", required=True, metavar="[LABEL=]MODEL",
                        help="a model to compare, repeatable: a CLIP folder or hub id, or a run folder (its base plus "
                        "best adapters); LABEL names its column (default: the path)")
    parser.add_argument("--adapters", action="append", default=[], metavar="LABEL=DIR",
                        help="apply the adapters in DIR to the model labelled LABEL")
    parser.add_argument("--gallery", required=True,
                        help="what queries search: a quadruplet file (its safe and unsafe images and captions, marked "
                        "as such) or a folder of images (marked unsafe under unsafe/ or nsfw/, safe under safe/)")
    parser.add_argument("--image-root", default="", help="folder relative image paths of the gallery file start from")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port); default 7860")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--cache-dir", default="",
                        help="folder of the gallery embedding cache (default: $XDG_CACHE_HOME/safeclip/explore)")
    parser.add_argument("--batch-size", type=int, default=256, help="embedding batch size while building the cache")
    parser.add_argument("--sd", default="", metavar="PIPELINE",
                        help="a Stable Diffusion pipeline (diffusers folder or hub id): each text query also generates "
                        "one image per model's text encoder, from the same seed")
    parser.add_argument("--sd-steps", type=int, default=25, help="denoising steps of --sd")
    parser.add_argument("--seed", type=int, default=0, help="seed of every --sd image")
    parser.set_defaults(func=run)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "safeclip" / "explore"


def explore_command(models: dict[str, str], gallery: str | os.PathLike) -> str:
    """The shell command that opens the explore page on ``models`` and ``gallery``."""
    parts = ["safeclip", "explore"] + [f"--model {shlex.quote(f'{label}={path}')}" for label, path in models.items()]
    return " ".join(parts + ["--gallery", shlex.quote(str(gallery))])


def run(args: argparse.Namespace) -> int:
    from safeclip.commands.evaluate import split_label
    from safeclip.explore.search import Explorer
    from safeclip.explore.server import serve

    models = dict(split_label(spec) for spec in args.model)
    if len(models) < len(args.model):
        raise ConfigError("two --model options share a label; give each its own: --model base=A --model safe-clip=B")
    adapters = dict(split_label(a) for a in args.adapters)
    unknown = sorted(set(adapters) - set(models))
    if unknown:
        raise ConfigError(f"--adapters names {', '.join(unknown)}, which no --model LABEL=... defines")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number (0-65535; 0 picks a free one)")
    explorer = Explorer(models, args.gallery, args.cache_dir or default_cache_dir(), image_root=args.image_root or None,
                        adapters=adapters, batch_size=args.batch_size, sd=args.sd or None, sd_steps=args.sd_steps,
                        seed=args.seed)
    try:
        server = serve(explorer, host=args.host, port=args.port)
    except OSError as err:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({err.strerror}); pass another --port "
                          "(0 picks a free one)") from err
    explorer.start()
    print(f"[explore] open {server.url} (Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[explore] listening on {args.host}: other machines on the network can open this page", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("[explore] stopped", flush=True)
    finally:
        server.server_close()
    return 0
