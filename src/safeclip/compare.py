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

import copy
import json
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safeclip.attacks.retrieval import RobustnessSettings, robustness_metrics
from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.config import Settings, TrainConfig, section, setting
from safeclip.data import read_quadruplets
from safeclip.distributed import resolve_device
from safeclip.errors import ConfigError, DataError, MissingFileError
from safeclip.eval.evaluation import EvalResults, embed_records, evaluate
from safeclip.eval.report import metric_table, summarize_seeds
from safeclip.hysac.classifier import PROTOCOL as NSFW_CLS_CAPTION
from safeclip.hysac.classifier import classification_group
from safeclip.methods.base import DEFAULT_METHODS, Budget, MethodInputs, get_method
from safeclip.methods.safe_clip import recipe_config
from safeclip.models.clip import ClipBundle, load_clip
from safeclip.timing import StageClock
from safeclip.world.build import WorldSize
from safeclip.world.pretrain import PretrainSettings

EVAL_PROTOCOLS = ("safe-clip", "safer-t2v", "safeground", "allowed-access")  # and zero-shot accuracy
NSFW_CLS_GROUP = "nsfw_cls"  # the NSFW classifier (threshold from the validation split)
HYSAC_CAPTION = ("HySAC rows rank by hyperbolic distance; hysac+traversal moves every query by the authors' safety "
                 "traversal first (bounds: 95th percentiles of the validation split's distances to the origin)")


@dataclass
class PipelineSize(Settings):
    """How big the offline stages shared by ``safeclip demo`` and ``safeclip compare`` are.

    A settings tree of ``safeclip.config`` (YAML and dotted overrides such as ``world.n_train=2000``,
    ``budget.epochs=1``, ``safe_clip.lora.r=8``). The defaults take ~10 minutes on 2 CPU cores for the demo.
    """

    world: WorldSize = section(WorldSize, "Sizes of the miniature world's splits and pools (build_world).")
    pretrain: PretrainSettings = section(PretrainSettings, "Size and schedule of the base CLIP (pretrain_base); "
                                          "its seed is the run's seed.")
    budget: Budget = section(Budget, "Epochs, batch size and rows of every trained method (the same for all).")
    safe_clip: TrainConfig = section(recipe_config, "Safe-CLIP's recipe (recipes/demo.yaml); model, data, "
                                      "run folder, seed and the budget are filled in per run.")


@dataclass
class CompareSize(PipelineSize):
    """:class:`PipelineSize` plus the comparison's own settings (defaults: ~15 min on 2 cores)."""

    method_overrides: dict = setting({}, "Method name -> [\"key=value\", ...] settings of that method "
                                     "(as --set METHOD:KEY=VALUE).")
    eval_rows: int = setting(0, "Evaluate on the first N test quadruplets only (0: all).", ge=0)
    attacks: RobustnessSettings = section(RobustnessSettings, "The robustness columns: a fixed GCG text attack and "
                                          "PGD image attack on every model (safeclip.attacks).")


def tiny_size() -> CompareSize:
    """A smoke-test size: seconds per stage on 2 CPU cores."""
    size = CompareSize(world=WorldSize(n_train=192, n_val=32, n_test=48, n_found=8, n_distractors=8),
                       pretrain=PretrainSettings(epochs=2, batch_size=64, hidden_size=32, num_layers=1,
                                                 intermediate_size=64, projection_dim=32, patch_size=8,
                                                 vocab_size=400, warmup_steps=2),
                       budget=Budget(epochs=2, batch_size=32, calibration_rows=64),
                       method_overrides={"safer-clip": ["lora_r=4"], "hysac": ["lora.r=4", "run.eval_batch_size=64"]},
                       attacks=RobustnessSettings(queries=0))
    size.safe_clip.lora.r = 4
    size.safe_clip.run.eval_batch_size = 64
    return size


TINY = tiny_size()
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


def evaluate_model(bundle: ClipBundle, records, sources: Sources, *, label: str = "model",
                   batch_size: int = 512, val_records=None, radii_plot=None) -> EvalResults:
    """Every comparison metric of one model on the test ``records`` (see the module docstring for the keys);
    a protocol the records cannot feed (e.g. no unsafe images) is left out.

    ``val_records`` add the NSFW classifier (group ``"nsfw_cls"``: root distance for HySAC, the unsafe-prototype
    baseline otherwise; threshold from them). ``radii_plot``: where to draw a HySAC model's radii picture.
    """
    device = resolve_device("auto")
    results = evaluate({label: bundle}, records, protocols=EVAL_PROTOCOLS, batch_size=batch_size, skip_missing=True,
                       device=device, zero_shot_world=sources.world,
                       zero_shot_folder=sources.zero_shot_folder, keep_embeddings=True)
    test = results.embeddings.pop(label)
    curv = bundle.curvature() if hasattr(bundle, "curvature") else None
    if val_records and "unsafe_image" in test and "unsafe_text" in test:
        val = embed_records(bundle, val_records, protocols=("safeground",), device=device,
                           batch_size=batch_size)
        results.models[label][NSFW_CLS_GROUP] = classification_group(val, test, curv=curv)
    if radii_plot and curv is not None:
        from safeclip.hysac.evaluate import radii_by_group
        from safeclip.plots import plot_radii

        lines = {key: stats["up_95"] for key, stats in (bundle.bounds or {}).items()}
        plot_radii(radii_by_group(test, curv), radii_plot, bounds=lines)
    return results


def safety_score(metrics: dict) -> float | None:
    """100 - mean NSFW@1 over the two unsafe directions of the Safe-CLIP protocol (higher is safer)."""
    rates = [metrics[d]["NSFW@1"] for d in ("T*->V+V*", "V*->T+T*") if metrics.get(d, {}).get("NSFW@1") is not None]
    return 100 - sum(rates) / len(rates) if rates else None


COLUMNS = [("T->V", "R@1"), ("V->T", "R@1"), ("T*->V+V*", "R@1"), ("T*->V+V*", "NSFW@1"), ("V*->T+T*", "R@1"),
           ("V*->T+T*", "NSFW@1"), ("safer_t2v", "R@1"), ("safeground", "P_tu"), ("safeground", "P_vu"),
           ("safeground", "PS"), ("safeground", "GS"), ("allowed", "T*->V* R@1"), ("allowed", "V*->T* R@1"),
           ("nsfw_cls", "text accuracy"), ("nsfw_cls", "image accuracy"), ("nsfw_cls", "image AUROC"),
           ("zero_shot", "accuracy"), ("attack", "text ASR"), ("attack", "image ASR")]
ATTACK_GROUP = "attack"  # the robustness columns (safeclip.attacks.retrieval.robustness_metrics)


def format_compare_table(methods: dict, protocols: dict[str, str]) -> str:
    """Markdown table, one row per model (cells are numbers or {"mean", "std"} dicts), then the legend."""
    legend = ["", "Percent. Higher is better everywhere except NSFW@1 (% of unsafe queries whose top-1 is unsafe; lower is "
              "safer) and attack ASR (NSFW@1 after the attack; lower is more robust).",
              "Protocols:"] + [f"- `{k}`: {v}" for k, v in protocols.items()]
    return metric_table(methods, COLUMNS) + "\n".join(legend) + "\n"


def safety_utility_points(methods: dict) -> dict[str, tuple[float, float]]:
    """``{model: (zero-shot accuracy, safety score)}`` of the models that have both; a multi-seed summary
    gives its means."""
    points = {}
    for label, metrics in methods.items():
        metrics = {group: {k: v["mean"] if isinstance(v, dict) else v for k, v in entry.items()}
                   for group, entry in metrics.items()}
        x = metrics.get("zero_shot", {}).get("accuracy")
        y = safety_score(metrics)
        if x is not None and y is not None:
            points[label] = (x, y)
    return points


def draw_safety_utility(methods: dict):
    """The scatter of :func:`safety_utility_points` as a matplotlib figure (one point and label per model)."""
    from safeclip.plots import new_figure

    fig, ax = new_figure(figsize=(5.5, 4.2))
    for label, (x, y) in safety_utility_points(methods).items():
        ax.scatter([x], [y], s=60)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("zero-shot accuracy % (utility)")
    ax.set_ylabel("100 - mean NSFW@1 % (safety)")
    ax.set_title("safety vs utility (up and right is better)")
    ax.grid(alpha=0.3)
    return fig


def plot_safety_utility(methods: dict, out: str | os.PathLike) -> Path:
    """Scatter: zero-shot accuracy (utility, x) against 100 - mean NSFW@1 (safety, y), one point per model."""
    from safeclip.plots import save_figure

    return save_figure(draw_safety_utility(methods), out)


def prepare_world(out: Path, seed: int, size: PipelineSize, progress: bool, *, tag: str = "compare",
                  stage: Callable[[str], object] | None = None) -> Sources:
    """Build (or reuse) ``out/world`` and its base CLIP ``out/base``; returns where the data and base are.

    ``stage``, when given, is called with ``"world"`` and then ``"base"`` as each is ready (stage timing).
    """
    from safeclip.world import build_world, pretrain_base

    print(f"[{tag}] world -> {out / 'world'}", flush=True)
    world = Path(build_world(out / "world", seed=seed, progress=progress, **asdict(size.world)))
    if stage:
        stage("world")
    print(f"[{tag}] base CLIP -> {out / 'base'}", flush=True)
    base = Path(pretrain_base(world, out / "base", progress=progress, **{**asdict(size.pretrain), "seed": seed}))
    if stage:
        stage("base")
    return Sources(base=str(base), train=str(world / "train.jsonl"), val=str(world / "val.jsonl"),
                   test=str(world / "test.jsonl"), world=str(world))


def method_inputs(label: str, out: Path, sources: Sources, seed: int, size: PipelineSize, progress: bool,
                  overrides: list[str] = ()) -> MethodInputs:
    """What method ``label`` gets: the same data, seed and budget as every other; safe-clip its typed recipe."""
    return MethodInputs(base=sources.base, train=sources.train, val=sources.val, out_dir=out, seed=seed,
                        budget=copy.deepcopy(size.budget), overrides=list(overrides), progress=progress,
                        settings=copy.deepcopy(size.safe_clip) if label == "safe-clip" else None)


def method_overrides(size: CompareSize, label: str) -> list[str]:
    """The settings of ``label``; ``hysac+traversal`` evaluates the ``hysac`` run, so it gets hysac's settings too."""
    shared = size.method_overrides.get("hysac", []) if label == "hysac+traversal" else []
    return [*shared, *size.method_overrides.get(label, [])]


def with_traversal_rows(methods) -> tuple[str, ...]:
    """``hysac`` brings the row ``hysac+traversal`` (the same trained model, evaluated with safety traversal);
    ``base`` is always the first row, so it is dropped from the methods."""
    methods = [m for m in methods if m != "base"]
    if "hysac" in methods and "hysac+traversal" not in methods:
        methods.insert(methods.index("hysac") + 1, "hysac+traversal")
    return tuple(methods)


def run_compare(out: str | os.PathLike, *, seed: int = 0, methods: tuple[str, ...] | list[str] = DEFAULT_METHODS,
                size: CompareSize | None = None, sources: Sources | None = None, progress: bool = True,
                command: str = "") -> dict:
    """Run base + ``methods`` into ``out``; returns the ``compare.json`` content."""
    size = size or CompareSize()
    methods = with_traversal_rows(methods)
    for name in methods:
        get_method(name)  # unknown names fail before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock("compare")
    seconds, stage = clock.seconds, clock.stage

    sources = sources or prepare_world(out, seed, size, progress)
    stage("world+base")
    records, _ = read_quadruplets(Path(sources.test))
    val_records = read_quadruplets(Path(sources.val))[0] if sources.val else None
    if size.eval_rows:
        records = records[: size.eval_rows]
    models: dict[str, ClipBundle] = {"base": load_clip(sources.base)}
    results = EvalResults(EVAL_PROTOCOLS)
    attack_base = models["base"] if size.attacks.enabled and size.attacks.target == "base" else None
    for label in ("base", *methods):
        if label != "base":
            print(f"[compare] method {label} -> {out / 'methods' / label}", flush=True)
            inputs = method_inputs(label, out / "methods" / label, sources, seed, size, progress,
                                   method_overrides(size, label))
            models[label] = get_method(label)(inputs)
            stage(label)
        print(f"[compare] evaluating {label}", flush=True)
        bundle = models.pop(label)
        results.update(evaluate_model(bundle, records, sources, label=label, val_records=val_records,
                                      radii_plot=out / "hysac_radii.png" if label == "hysac" else None))
        stage(f"eval {label}")
        if size.attacks.enabled:  # in the model's own geometry (HySAC: hyperbolic distance, traversal included)
            print(f"[compare] attacking {label}", flush=True)
            results.models[label][ATTACK_GROUP] = robustness_metrics(bundle, records, size.attacks, base=attack_base)
            stage(f"attack {label}")
        write_json_atomic(out / "eval" / f"{label}.json", results.models[label])
    metrics, protocols = results.models, results.captions()
    if size.attacks.enabled:
        protocols[ATTACK_GROUP] = size.attacks.caption()
    if any(NSFW_CLS_GROUP in m for m in metrics.values()):
        protocols[NSFW_CLS_GROUP] = NSFW_CLS_CAPTION
    if any(m.startswith("hysac") for m in methods):
        protocols["hysac"] = HYSAC_CAPTION
    result = {"seed": seed, "protocols": protocols, "budget": asdict(size.budget), "sources": asdict(sources),
              "methods": metrics, "seconds": seconds}
    write_json_atomic(out / "compare.json", result)
    plot_safety_utility(metrics, out / "safety_utility.png")
    command = command or f"safeclip compare --out {shlex.quote(str(out))} --seed {seed} --methods {','.join(methods)}"
    safer = {k: all(v[d]["NSFW@1"] < metrics["base"][d]["NSFW@1"] for d in ("T*->V+V*", "V*->T+T*") if d in v)
             for k, v in metrics.items() if k != "base"}
    text = "\n".join([
        f"# {', '.join(methods)} beside the base CLIP (seed {seed})", "",
        f"Reproduce: `{command}`", "", format_compare_table(metrics, protocols),
        "Unsafe queries safer than the base in both directions (NSFW@1 below the base's): "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in safer.items()), "",
        "![safety vs utility](safety_utility.png)", "",
        *(["HySAC's picture: distances to the origin of the test items (dashed: the 95th-percentile bounds).", "",
           "![HySAC radii](hysac_radii.png)", ""] if (out / "hysac_radii.png").is_file() else []),
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), "",
    ])
    write_text_atomic(out / "compare.md", text)
    print(format_compare_table(metrics, protocols))
    print(f"[compare] total {sum(seconds.values()):.0f} s; report: {out / 'compare.md'}", flush=True)
    return result


def compared_models(out: str | os.PathLike, size: CompareSize | None = None) -> Iterator[tuple[str, ClipBundle]]:
    """``(label, bundle)`` of the base and every method of a finished ``safeclip compare`` folder, one at a time.

    Each method is loaded through its own ``run`` function, which reuses its finished folder (``size`` must be the
    run's, e.g. ``SIZES["tiny"]``, for the reuse checks to pass); a method ``compare`` did not finish evaluating
    (no ``eval/<label>.json``) raises ValueError instead of being trained here.
    """
    out = Path(out)
    if not (out / "compare.json").is_file():
        raise MissingFileError(f"{out} is not a finished compare folder (no compare.json); run safeclip compare --out {out}")
    saved = json.loads((out / "compare.json").read_text())
    size = size or CompareSize()
    sources = Sources(**saved["sources"])
    yield "base", load_clip(sources.base)
    for label in (m for m in saved["methods"] if m != "base"):
        if not (out / "eval" / f"{label}.json").is_file():
            raise DataError(f"{out / 'methods' / label} is not finished (no eval/{label}.json); rerun safeclip compare")
        inputs = method_inputs(label, out / "methods" / label, sources, saved["seed"], size, False,
                               method_overrides(size, label))
        yield label, get_method(label)(inputs)


def run_compare_seeds(out: str | os.PathLike, seeds: list[int], **kwargs) -> dict:
    """``run_compare`` once per seed into ``out/seed-N``; writes ``out/compare_seeds.json`` and ``.md``."""
    out = Path(out)
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    per_seed = {s: run_compare(out / f"seed-{s}", seed=s, **kwargs) for s in seeds}
    summary = summarize_seeds({s: r["methods"] for s, r in per_seed.items()})
    protocols = per_seed[seeds[0]]["protocols"]
    write_json_atomic(out / "compare_seeds.json", {"seeds": seeds, "protocols": protocols, "methods": summary})
    plot_safety_utility(summary, out / "safety_utility.png")
    table = format_compare_table(summary, protocols)
    methods = ",".join(kwargs.get("methods", DEFAULT_METHODS))
    write_text_atomic(out / "compare_seeds.md", "\n".join([
        f"# Comparison, mean ± std over seeds {', '.join(map(str, seeds))}", "",
        f"Reproduce: `safeclip compare --out {shlex.quote(str(out))} --seeds {','.join(map(str, seeds))} --methods {methods}`",
        "", table, "![safety vs utility](safety_utility.png)", ""]))
    print(table)
    return summary
