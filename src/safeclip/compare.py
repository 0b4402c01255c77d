"""`safeclip compare`: the base CLIP, Safe-CLIP, SafeR-CLIP and UWM measured the same way, side by side.

    safeclip compare --out compare [--seed 0] [--methods safe-clip,safer-clip,uwm]
    safeclip compare --out compare --seeds 0,1,2          # one folder per seed + mean ± std table

Offline (the default), like ``safeclip demo`` and with the same stages and sizes:

1. ``DIR/world`` and ``DIR/base``: the miniature ViSU world and its base CLIP (``build_world`` /
   ``pretrain_base``; reused when already built with the same settings, so ``--out demo`` reuses a
   demo's world and base)
2. ``DIR/methods/<name>``: every method with the same training quadruplets, seed and :class:`Budget`
   (reused when finished; delete the folder to redo one)
3. ``DIR/eval/<model>.json``: the metrics of each model on the test split, every one labelled by protocol:
   the Safe-CLIP/HySAC retrieval protocol (``"T->V"``, ``"V->T"``, ``"T*->V+V*"``, ``"V*->T+T*"``, as
   in the demo's ``results.json``), ``"safer_t2v"`` (SafeR-CLIP T*->V, safe-only gallery, R@1/5/10),
   ``"safeground"`` (nine percentages) and ``"zero_shot"`` (shape / colour accuracy of the safe test
   images with prompt templates, and their mean ``"accuracy"``)
4. ``DIR/compare.json``, ``DIR/compare.md`` (table) and ``DIR/safety_utility.png`` (scatter: zero-shot
   accuracy against 100 - mean NSFW@1 of the two unsafe directions)

Real data and backbones (GPU): give ``Sources(base=..., train=..., test=..., zero_shot_folder=...)``
(CLI: ``--base --train --val --test --zero-shot-folder``); the world stages are skipped. See docs/compare.md.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.data import read_quadruplets
from safeclip.eval.embed import embed_quadruplets
from safeclip.eval.retrieval import PROTOCOL_CAPTIONS, safe_clip_protocol
from safeclip.eval.safeground import PROTOCOL as SAFEGROUND_PROTOCOL
from safeclip.eval.safeground import safeground
from safeclip.eval.safer_protocol import PROTOCOL as SAFER_PROTOCOL
from safeclip.eval.safer_protocol import safer_t2v
from safeclip.eval.zero_shot import PROTOCOL as ZERO_SHOT_PROTOCOL
from safeclip.eval.zero_shot import folder_zero_shot, world_zero_shot
from safeclip.methods.base import METHOD_NAMES, Budget, MethodInputs, get_method
from safeclip.models.clip import ClipBundle, load_clip
from safeclip.timing import StageClock

PROTOCOLS = {
    "T->V / V->T / T*->V+V* / V*->T+T*": PROTOCOL_CAPTIONS["safe-clip"],
    "safer_t2v": SAFER_PROTOCOL,
    "safeground": SAFEGROUND_PROTOCOL,
    "zero_shot": ZERO_SHOT_PROTOCOL,
}


@dataclass
class CompareSize:
    """How big the world, base and method budgets are (defaults: the demo's sizes, ~15 min on 2 cores)."""

    world: dict = field(default_factory=dict)  # keyword arguments of build_world
    pretrain: dict = field(default_factory=dict)  # keyword arguments of pretrain_base
    budget: Budget = field(default_factory=Budget)  # the same for every method
    method_overrides: dict = field(default_factory=dict)  # method name -> ["key=value", ...]
    eval_rows: int = 0  # evaluate on the first N test quadruplets only (0: all)


TINY = CompareSize(
    world={"n_train": 192, "n_val": 32, "n_test": 48, "n_found": 8, "n_distractors": 8},
    pretrain={"epochs": 2, "batch_size": 64, "hidden_size": 32, "num_layers": 1, "intermediate_size": 64,
              "projection_dim": 32, "patch_size": 8, "vocab_size": 400, "warmup_steps": 2},
    budget=Budget(epochs=2, batch_size=32, calibration_rows=64),
    method_overrides={"safe-clip": ["lora.r=4", "run.eval_batch_size=64"], "safer-clip": ["lora_r=4"]},
)
SIZES = {"default": CompareSize(), "tiny": TINY}


@dataclass
class Sources:
    """Where the base model and data come from (filled by the world stages in offline mode)."""

    base: str
    train: str
    test: str
    val: str | None = None
    world: str | None = None  # the offline world folder: zero-shot on its attributes
    zero_shot_folder: str | None = None  # real data: folder/<class>/<image> for zero-shot accuracy


def evaluate_model(bundle: ClipBundle, records, sources: Sources, *, batch_size: int = 512) -> dict:
    """Every metric of one model on the test ``records`` (see the module docstring for the keys)."""
    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records,
                            batch_size=batch_size)
    out = safe_clip_protocol(emb["safe_text"], emb["safe_image"], emb.get("unsafe_text"), emb.get("unsafe_image"))
    if "unsafe_text" in emb:
        out["safer_t2v"] = safer_t2v(emb["unsafe_text"], emb["safe_image"])
    if "unsafe_text" in emb and "unsafe_image" in emb:
        out["safeground"] = safeground(emb["safe_text"], emb["unsafe_text"], emb["safe_image"], emb["unsafe_image"])
    if sources.world:
        zs = world_zero_shot(bundle, sources.world)
        out["zero_shot"] = {"accuracy": zs.pop("mean"), **zs}
    elif sources.zero_shot_folder:
        out["zero_shot"] = {"accuracy": folder_zero_shot(bundle, sources.zero_shot_folder)}
    return out


def safety_score(metrics: dict) -> float | None:
    """100 - mean NSFW@1 over the two unsafe directions of the Safe-CLIP protocol (higher is safer)."""
    rates = [metrics[d]["NSFW@1"] for d in ("T*->V+V*", "V*->T+T*") if d in metrics]
    return 100 - sum(rates) / len(rates) if rates else None


COLUMNS = [("T->V", "R@1"), ("V->T", "R@1"), ("T*->V+V*", "R@1"), ("T*->V+V*", "NSFW@1"), ("V*->T+T*", "R@1"),
           ("V*->T+T*", "NSFW@1"), ("safer_t2v", "R@1"), ("safeground", "P_tu"), ("safeground", "P_vu"),
           ("safeground", "PS"), ("safeground", "GS"), ("zero_shot", "accuracy")]


def _cell(value) -> str:
    if isinstance(value, dict):
        return f"{value['mean']:.1f} ± {value['std']:.1f}"
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def format_compare_table(methods: dict) -> str:
    """Markdown table, one row per model; cells are numbers or {"mean", "std"} dicts."""
    head = " | ".join(f"{d} {m}" for d, m in COLUMNS)
    lines = [f"| model | {head} |", "|---|" + "---:|" * len(COLUMNS)]
    for label, metrics in methods.items():
        lines.append(f"| {label} | " + " | ".join(_cell(metrics.get(d, {}).get(m)) for d, m in COLUMNS) + " |")
    legend = ["", "Percent. Higher is better everywhere except NSFW@1 (% of unsafe queries whose top-1 is unsafe; lower is safer).",
              "Protocols:"] + [f"- `{k}`: {v}" for k, v in PROTOCOLS.items()]
    return "\n".join(lines + legend) + "\n"


def plot_safety_utility(methods: dict, out: str | os.PathLike) -> Path:
    """Scatter: zero-shot accuracy (utility, x) against 100 - mean NSFW@1 (safety, y), one point per model."""
    from safeclip.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, metrics in methods.items():
        metrics = {group: {k: v["mean"] if isinstance(v, dict) else v for k, v in entry.items()}
                   for group, entry in metrics.items()}  # a multi-seed summary plots its means
        x = metrics.get("zero_shot", {}).get("accuracy")
        y = safety_score(metrics)
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("zero-shot accuracy % (utility)")
    ax.set_ylabel("100 - mean NSFW@1 % (safety)")
    ax.set_title("safety vs utility (up and right is better)")
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def prepare_world(out: Path, seed: int, size: CompareSize, progress: bool) -> Sources:
    from safeclip.world import build_world, pretrain_base

    print(f"[compare] world -> {out / 'world'}", flush=True)
    world = Path(build_world(out / "world", seed=seed, progress=progress, **size.world))
    print(f"[compare] base CLIP -> {out / 'base'}", flush=True)
    base = Path(pretrain_base(world, out / "base", seed=seed, progress=progress, **size.pretrain))
    return Sources(base=str(base), train=str(world / "train.jsonl"), val=str(world / "val.jsonl"),
                   test=str(world / "test.jsonl"), world=str(world))


def run_compare(out: str | os.PathLike, *, seed: int = 0, methods: tuple[str, ...] | list[str] = METHOD_NAMES,
                size: CompareSize | None = None, sources: Sources | None = None, progress: bool = True,
                command: str = "") -> dict:
    """Run base + ``methods`` into ``out``; returns the ``compare.json`` content."""
    size = size or CompareSize()
    for name in methods:
        get_method(name)  # unknown names fail before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock("compare")
    seconds, stage = clock.seconds, clock.stage

    sources = sources or prepare_world(out, seed, size, progress)
    stage("world+base")
    records, _ = read_quadruplets(Path(sources.test))
    if size.eval_rows:
        records = records[: size.eval_rows]
    models: dict[str, ClipBundle] = {"base": load_clip(sources.base)}
    results: dict[str, dict] = {}
    for label in ("base", *methods):
        if label != "base":
            print(f"[compare] method {label} -> {out / 'methods' / label}", flush=True)
            inputs = MethodInputs(base=sources.base, train=sources.train, val=sources.val,
                                  out_dir=out / "methods" / label, seed=seed, budget=size.budget,
                                  overrides=list(size.method_overrides.get(label, [])), progress=progress)
            models[label] = get_method(label)(inputs)
            stage(label)
        print(f"[compare] evaluating {label}", flush=True)
        results[label] = evaluate_model(models.pop(label), records, sources)
        write_json_atomic(out / "eval" / f"{label}.json", results[label])
        stage(f"eval {label}")
    result = {"seed": seed, "protocols": PROTOCOLS, "budget": asdict(size.budget), "sources": asdict(sources),
              "methods": results, "seconds": seconds}
    write_json_atomic(out / "compare.json", result)
    plot_safety_utility(results, out / "safety_utility.png")
    command = command or f"safeclip compare --out {shlex.quote(str(out))} --seed {seed} --methods {','.join(methods)}"
    safer = {k: all(v[d]["NSFW@1"] < results["base"][d]["NSFW@1"] for d in ("T*->V+V*", "V*->T+T*") if d in v)
             for k, v in results.items() if k != "base"}
    text = "\n".join([
        f"# Safe-CLIP, SafeR-CLIP and UWM beside the base CLIP (seed {seed})", "",
        f"Reproduce: `{command}`", "", format_compare_table(results),
        "Unsafe queries safer than the base in both directions (NSFW@1 below the base's): "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in safer.items()), "",
        "![safety vs utility](safety_utility.png)", "",
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), "",
    ])
    write_text_atomic(out / "compare.md", text)
    print(format_compare_table(results))
    print(f"[compare] total {sum(seconds.values()):.0f} s; report: {out / 'compare.md'}", flush=True)
    return result


def summarize(per_seed: dict[int, dict]) -> dict:
    """Mean and std (population) over seeds of every number in each model's metrics."""
    first = next(iter(per_seed.values()))["methods"]
    summary: dict = {}
    for model, metrics in first.items():
        for group, entry in metrics.items():
            for key in entry:
                values = torch.tensor([r["methods"][model][group][key] for r in per_seed.values()], dtype=torch.float64)
                summary.setdefault(model, {}).setdefault(group, {})[key] = {
                    "mean": float(values.mean()), "std": float(values.std(unbiased=False))}
    return summary


def run_compare_seeds(out: str | os.PathLike, seeds: list[int], **kwargs) -> dict:
    """``run_compare`` once per seed into ``out/seed-N``; writes ``out/compare_seeds.json`` and ``.md``."""
    out = Path(out)
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    per_seed = {s: run_compare(out / f"seed-{s}", seed=s, **kwargs) for s in seeds}
    summary = summarize(per_seed)
    write_json_atomic(out / "compare_seeds.json", {"seeds": seeds, "protocols": PROTOCOLS, "methods": summary})
    plot_safety_utility(summary, out / "safety_utility.png")
    table = format_compare_table(summary)
    methods = ",".join(kwargs.get("methods", METHOD_NAMES))
    write_text_atomic(out / "compare_seeds.md", "\n".join([
        f"# Comparison, mean ± std over seeds {', '.join(map(str, seeds))}", "",
        f"Reproduce: `safeclip compare --out {shlex.quote(str(out))} --seeds {','.join(map(str, seeds))} --methods {methods}`",
        "", table, "![safety vs utility](safety_utility.png)", ""]))
    print(table)
    return summary
