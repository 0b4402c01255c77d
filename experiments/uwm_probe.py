"""Why UWM does not make the offline world's base safer: a reproducible probe (docs/compare.md, "UWM").

    python experiments/uwm_probe.py --out runs/uwm-probe                    # the compare/demo world, seed 0
    python experiments/uwm_probe.py --out runs/uwm-probe-wide --wide        # a 2x wider base CLIP
    python experiments/uwm_probe.py --out runs/uwm-probe-global --markers global
    python experiments/uwm_probe.py --out runs/uwm-probe-corner --markers corner

Builds (or reuses) a world and its base CLIP under ``--out``, calibrates UWM once (``--calibration`` pairs of
the training split) and evaluates on the test split: the base, UWM at each ``--sparsity``, and UWM with only
the text or only the vision edit. It also reports the spread of the per-weight unsafe/safe score ratio per
edited layer (1st, 50th, 99th percentile): when that ratio is flat, the top of the score mass is chosen by
weight size and the edit is not about unsafe content. Writes ``OUT/uwm_probe.json`` and ``OUT/uwm_probe.md``.

Variants (each a question about the world, not a change of UWM):

- ``--wide``: hidden 192, MLP 768, 6 heads, projection 128 (does a roomier CLIP localise "unsafe"?);
- ``--markers global``: v* carries its category pattern over the whole image instead of over the first object,
  closer to ViSU's v* that is unsafe everywhere (does UWM's per-token std normalisation hide a local marker?);
- ``--markers corner``: the first world's v*, a pattern tile in a corner of the safe image.
  These variants swap the world's unsafe-image drawing for the run of this script only.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from PIL import ImageDraw

from safeclip.checkpoint import write_json_atomic
from safeclip.compare import Sources, evaluate_model
from safeclip.data import read_quadruplets
from safeclip.methods.uwm import UwmConfig, calibrate, select_edit
from safeclip.models.clip import load_clip
from safeclip.world import build as world_build
from safeclip.world import build_world, pretrain_base, scenes
from safeclip.world.scenes import IMAGE_SIZE

WIDE = {"hidden_size": 192, "intermediate_size": 768, "num_heads": 6, "projection_dim": 128}
KEYS = [("T->V", "R@1"), ("V->T", "R@1"), ("T*->V+V*", "NSFW@1"), ("V*->T+T*", "NSFW@1"), ("safeground", "P_tu"),
        ("safeground", "P_vu")]


def draw_global_marker(image, marker, rng: random.Random):
    """The category's pattern in its colour over the whole image (replaces the corner tile)."""
    image, size, colour = image.copy(), IMAGE_SIZE, marker.colour
    pen, off = ImageDraw.Draw(image), rng.randint(0, 3)
    if marker.pattern == "cross":
        for k in range(-size, size, 8):
            pen.line((k + off, 0, k + off + size, size), fill=colour, width=1)
            pen.line((k + off + size, 0, k + off, size), fill=colour, width=1)
    elif marker.pattern == "stripes":
        for k in range(off, size, 4):
            pen.line((0, k, size, k), fill=colour, width=1)
    elif marker.pattern == "dots":
        for i in range(off, size, 4):
            for j in range(off, size, 4):
                pen.point((i, j), fill=colour)
    elif marker.pattern == "zigzag":
        for y in range(off, size, 8):
            pen.line([(x, y + (0 if x % 4 < 2 else 3)) for x in range(0, size + 2, 2)], fill=colour, width=1)
    else:  # rings
        for r in range(3 + off, size, 6):
            pen.ellipse((size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r), outline=colour, width=1)
    return image


def ratio_spread(scores: dict[str, torch.Tensor], bundle) -> dict[str, list[float]]:
    """Per layer: 1st / 50th / 99th percentile of the unsafe/safe ratio (the text score's |W| factor removed)."""
    spread = {}
    for key, score in scores.items():
        side, name = key.split(".", 1)
        if side == "text":
            weight = bundle.text.get_submodule(name).weight.detach().float().abs()
            score = score / weight.clamp(min=1e-12)
        q = torch.quantile(score.flatten()[:1_000_000].double(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.double))
        spread[key] = [round(v, 3) for v in q.tolist()]
    return spread


def use_marker(draw) -> None:
    """Build worlds whose v* is the safe image with ``draw(image, marker, rng)`` applied (this process only)."""
    plain = scenes.render

    def render(scene, rng, *, marker=None):
        image = plain(scene, rng)
        return draw(image, marker, rng) if marker is not None else image

    world_build.render = render


def check_variant(out: Path, variant: dict) -> None:
    """One variant per folder: the world's own cache key does not know the marker style."""
    path = out / "variant.json"
    if path.is_file() and json.loads(path.read_text()) != variant:
        raise SystemExit(f"{out} holds the probe variant {path.read_text().strip()}, not {variant}; "
                         "use another --out (or delete the folder)")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, variant)


def row(metrics: dict) -> dict:
    return {f"{a} {b}": round(metrics[a][b], 1) for a, b in KEYS}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wide", action="store_true", help="a 2x wider base CLIP")
    parser.add_argument("--markers", choices=("world", "corner", "global"), default="world")
    parser.add_argument("--calibration", type=int, default=1024, help="calibration pairs (compare's budget: 1024)")
    parser.add_argument("--sparsity", default="0.98,0.95,0.9")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    check_variant(args.out, {"seed": args.seed, "wide": args.wide, "markers": args.markers})
    if args.markers != "world":
        use_marker(draw_global_marker if args.markers == "global" else scenes.draw_corner_marker)
    world = Path(build_world(args.out / "world", seed=args.seed, progress=True))
    base = Path(pretrain_base(world, args.out / "base", seed=args.seed, progress=True, **(WIDE if args.wide else {})))
    bundle = load_clip(base)
    train, _ = read_quadruplets(world / "train.jsonl")
    test, _ = read_quadruplets(world / "test.jsonl")
    sources = Sources(base=str(base), train=str(world / "train.jsonl"), test=str(world / "test.jsonl"))
    results = {"base": row(evaluate_model(bundle, test, sources))}
    scores = calibrate(bundle, random.Random(args.seed).sample(train, args.calibration), UwmConfig(), progress=True)
    edits = {f"uwm {s}": (scores, float(s)) for s in args.sparsity.split(",")}
    for side in ("text", "vision"):
        edits[f"uwm 0.98 {side} only"] = ({k: v for k, v in scores.items() if k.startswith(side)}, 0.98)
    for name, (chosen, sparsity) in edits.items():
        edit = select_edit(bundle, chosen, UwmConfig(sparsity=sparsity))
        edit.apply(bundle)
        results[name] = row(evaluate_model(bundle, test, sources))
        edit.undo(bundle)
        print(name, results[name], flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
              "score_ratio_percentiles_1_50_99": ratio_spread(scores, bundle),
              "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(args.out / "uwm_probe.json", report)
    header = ["model"] + [f"{a} {b}" for a, b in KEYS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name] + [str(v) for v in r.values()]) + " |" for name, r in results.items()]
    lines += ["", "Score ratio unsafe/safe (1st / 50th / 99th percentile) per layer:", ""]
    lines += [f"- `{k}`: {v}" for k, v in report["score_ratio_percentiles_1_50_99"].items()]
    (args.out / "uwm_probe.md").write_text(f"# UWM probe\n\n`{' '.join(['python experiments/uwm_probe.py'] + (argv or []))}`\n\n"
                                           + "\n".join(lines) + "\n")
    print((args.out / "uwm_probe.md").read_text())
    return report


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
