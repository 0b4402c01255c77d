"""Why UWM does not make the offline world's base safer: a reproducible probe (docs/compare.md, "UWM").

    python experiments/uwm_probe.py --out runs/uwm-probe                    # the compare/demo world, seed 0
    python experiments/uwm_probe.py --out runs/uwm-probe-wide --wide        # a 2x wider base CLIP
    python experiments/uwm_probe.py --out runs/uwm-probe-global --markers global
    python experiments/uwm_probe.py --out runs/uwm-probe-corner --markers corner
    python experiments/uwm_probe.py --out runs/uwm-probe-random --batch-pairs random

Builds (or reuses) a world and its base CLIP under ``--out``, calibrates UWM once (``--calibration`` pairs of
the training split) and evaluates on the test split: the base, UWM at each ``--sparsity``, and UWM with only
the text or only the vision edit, UWM with one selection per category (their union, ``categories=each``),
and a gradient-chosen edit of the same layers (below). It also reports the spread of the per-weight unsafe/safe score ratio per
edited layer (1st, 50th, 99th percentile): when that ratio is flat, the top of the score mass is chosen by
weight size and the edit is not about unsafe content. Writes ``OUT/uwm_probe.json`` and ``OUT/uwm_probe.md``.

The gradient-chosen edit asks whether *any* few weights of those layers carry "unsafe" apart from the rest:
it ranks the weights by w * dL/dw of the unsafe preference L = mean over the calibration pairs of
cos(t*, v*) - cos(t*, v) + cos(v*, t*) - cos(v*, t) and prunes (or negates) the top 2% of each layer. It is
an upper reference for a sparse edit, not UWM (UWM is training-free and gradient-free).

Variants (each a question about the world, not a change of UWM):

- ``--wide``: hidden 192, MLP 768, 6 heads, projection 128 (does a roomier CLIP localise "unsafe"?);
- ``--markers global``: v* carries its category pattern over the whole image instead of over the first object,
  closer to ViSU's v* that is unsafe everywhere (does UWM's per-token std normalisation hide a local marker?);
- ``--markers corner``: the first world's v*, a pattern tile in a corner of the safe image.
  These variants swap the world's unsafe-image drawing for the run of this script only.
- ``--batch-pairs random``: the base CLIP sees random safe and unsafe pairs per batch, as web data would,
  instead of each scene's two pairs side by side (is the in-batch hard negative what spreads "unsafe"?).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import ImageDraw
from torch.utils.data import DataLoader

from safeclip.checkpoint import write_json_atomic
from safeclip.compare import Sources, evaluate_model
from safeclip.data import read_quadruplets
from safeclip.data.loader import QuadrupletCollator, QuadrupletDataset
from safeclip.data.quadruplets import MODALITIES
from safeclip.methods.uwm import UwmConfig, calibrate, category_groups, scored_layers, select_edit, weight_edit
from safeclip.models.clip import load_clip
from safeclip.train import encode_batch_images, encode_batch_texts
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


def unsafe_preference_gradients(bundle, records, cfg: UwmConfig) -> dict[str, torch.Tensor]:
    """``w * dL/dw`` (clamped at 0) of UWM's layers for L = how much unsafe queries prefer the unsafe item."""
    layers = scored_layers(bundle, cfg)
    params = [p for p in list(bundle.text.parameters()) + list(bundle.vision.parameters()) if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    for m in layers.values():
        m.weight.requires_grad_(True)
        m.weight.grad = None
    loader = DataLoader(QuadrupletDataset(records, bundle.image_processor, list(MODALITIES)), batch_size=128,
                        collate_fn=QuadrupletCollator(bundle.tokenizer))

    for batch in loader:
        embeds = encode_batch_texts(bundle.text, batch) | encode_batch_images(bundle.vision, batch, torch.float32)
        t, v, t_u, v_u = (F.normalize(embeds[k], dim=-1) for k in ("safe_text", "safe_image", "unsafe_text", "unsafe_image"))
        preference = (t_u * v_u).sum(-1) - (t_u * v).sum(-1) + (v_u * t_u).sum(-1) - (v_u * t).sum(-1)
        (preference.sum() / len(records)).backward()
    scores = {k: (m.weight.grad * m.weight).detach().clamp(min=0) for k, m in layers.items()}
    for m in layers.values():
        m.weight.grad = None
        m.weight.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return scores


def top_share(scores: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """Flat indices of each layer's top ``share`` of weights by score."""
    return {k: torch.topk(s.flatten(), max(1, int(share * s.numel()))).indices.sort().values for k, s in scores.items()}


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
    parser.add_argument("--batch-pairs", choices=("scene", "random"), default="scene",
                        help="how the base CLIP's batches pair safe and unsafe items (PretrainSettings.batch_pairs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    check_variant(args.out, {"seed": args.seed, "wide": args.wide, "markers": args.markers, "batch_pairs": args.batch_pairs})
    if args.markers != "world":
        use_marker(draw_global_marker if args.markers == "global" else scenes.draw_corner_marker)
    world = Path(build_world(args.out / "world", seed=args.seed, progress=True))
    base = Path(pretrain_base(world, args.out / "base", seed=args.seed, progress=True, batch_pairs=args.batch_pairs,
                              **(WIDE if args.wide else {})))
    bundle = load_clip(base)
    train, _ = read_quadruplets(world / "train.jsonl")
    test, _ = read_quadruplets(world / "test.jsonl")
    sources = Sources(base=str(base), train=str(world / "train.jsonl"), test=str(world / "test.jsonl"))
    results = {"base": row(evaluate_model(bundle, test, sources).models["model"])}
    calibration = random.Random(args.seed).sample(train, args.calibration)
    scores = calibrate(bundle, calibration, UwmConfig(), progress=True)
    per_category = [calibrate(bundle, group, UwmConfig()) for group in category_groups(calibration, "each").values()]
    edits = {f"uwm {s}": select_edit(bundle, scores, UwmConfig(sparsity=float(s))) for s in args.sparsity.split(",")}
    for side in ("text", "vision"):
        edits[f"uwm 0.98 {side} only"] = select_edit(bundle, {k: v for k, v in scores.items() if k.startswith(side)},
                                                     UwmConfig())
    edits["uwm 0.98 per category (union)"] = select_edit(bundle, per_category, UwmConfig())
    gradients = unsafe_preference_gradients(bundle, calibration, UwmConfig())
    chosen = top_share(gradients, 0.02)
    for alpha, verb in ((0.0, "pruned"), (-1.0, "negated")):
        edits[f"gradient-chosen 2%, {verb}"] = weight_edit(bundle, chosen, alpha)
    for name, edit in edits.items():
        edit.apply(bundle)
        results[name] = row(evaluate_model(bundle, test, sources).models["model"])
        edit.undo(bundle)
        print(name, results[name], flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
              "edited_share": {name: round(sum(edit.counts().values()) / sum(s.numel() for s in scores.values()), 4)
                               for name, edit in edits.items()},
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
