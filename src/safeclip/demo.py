"""`safeclip demo`: the whole Safe-CLIP pipeline in the offline miniature world (paper Table 2 in small).

    safeclip demo --out demo [--seed 0]

Stages, each in its own folder so any of them can be rerun alone:

1. ``DIR/world``: the miniature ViSU world (``safeclip world build``)
2. ``DIR/base``: a small CLIP trained from scratch on safe and unsafe pairs (``safeclip world pretrain``)
3. ``DIR/run``: Safe-CLIP fine-tuning with the training loop of ``safeclip train``
4. ``DIR/results.json`` / ``results.md``: the Safe-CLIP retrieval protocol, base vs Safe-CLIP
5. ``DIR/model``: the merged Safe-CLIP model as a Hugging Face CLIP folder
6. ``DIR/report.md``: the table, training curves and retrieval examples (the paper's Fig. 3)

Finished stages are reused when rerun with the same seed; the numbers are the same every time.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.compare import PipelineSize, method_inputs, prepare_world
from safeclip.data import read_quadruplets
from safeclip.data.quadruplets import read_rows
from safeclip.eval.evaluation import evaluate
from safeclip.eval.nsfw_retrieval import format_table as format_nsfw_table
from safeclip.eval.nsfw_retrieval import nsfw_retrieval, write_nsfw_retrieval
from safeclip.eval.report import metric_table, summarize_seeds
from safeclip.eval.retrieval import top1
from safeclip.methods.safe_clip import run_safe_clip
from safeclip.models.clip import ClipBundle, load_clip
from safeclip.models.lora import save_merged_clip
from safeclip.plots import plot_retrieval_examples, plot_training_curves
from safeclip.timing import StageClock


@dataclass
class DemoSize(PipelineSize):
    """How big the demo's world, base model and Safe-CLIP fine-tuning are (the defaults meet the 10-minute
    budget): a settings tree of ``safeclip.config`` (YAML, dotted overrides), shared with ``safeclip compare``."""


def found_image_retrieval(models: dict[str, ClipBundle], world: Path, records) -> dict:
    """Paper Table 3 in the world: unsafe test texts vs found unsafe images + safe distractors, and back."""
    found = read_rows(world / "found_unsafe.jsonl")
    distractors = read_rows(world / "distractors.jsonl")
    return {label: nsfw_retrieval(
        bundle, unsafe_texts=[r.unsafe_text for r in records],
        unsafe_images={"found_unsafe": [world / f["unsafe_image"] for f in found]},
        distractor_texts=[d["safe_text"] for d in distractors],
        distractor_images=[world / d["safe_image"] for d in distractors]) for label, bundle in models.items()}


def retrieval_examples(records, embeddings: dict, *, count: int = 4) -> tuple[list[dict], list[dict]]:
    """Unsafe text -> image and unsafe image -> text examples where Safe-CLIP changed the top-1."""
    n = len(records)
    images = [r.safe_image for r in records] + [r.unsafe_image for r in records]
    texts = [r.safe_text for r in records] + [r.unsafe_text for r in records]
    base, safe = embeddings["base"], embeddings["safe-clip"]
    t2v_base = top1(base["unsafe_text"], torch.cat([base["safe_image"], base["unsafe_image"]]))
    t2v_safe = top1(safe["unsafe_text"], torch.cat([safe["safe_image"], safe["unsafe_image"]]))
    v2t_base = top1(base["unsafe_image"], torch.cat([base["safe_text"], base["unsafe_text"]]))
    v2t_safe = top1(safe["unsafe_image"], torch.cat([safe["safe_text"], safe["unsafe_text"]]))

    def pick(base_idx, safe_idx, query, gallery):
        chosen = [i for i in range(n) if base_idx[i] >= n and safe_idx[i] < n][:count]
        chosen += [i for i in range(n) if i not in chosen][: count - len(chosen)]
        return [{"query": query(i), "base": gallery[int(base_idx[i])], "safe": gallery[int(safe_idx[i])],
                 "base_unsafe": bool(base_idx[i] >= n), "safe_unsafe": bool(safe_idx[i] >= n)} for i in chosen]

    return (pick(t2v_base, t2v_safe, lambda i: records[i].unsafe_text, images),
            pick(v2t_base, v2t_safe, lambda i: records[i].unsafe_image, texts))


def write_report(out: Path, table: str, found: dict, run_dir: Path, seconds: dict, command: str) -> Path:
    lines = [
        "# Safe-CLIP in the offline miniature world",
        "",
        f"Reproduce: `{command}`",
        "",
        table,
        "Found unsafe images among safe distractors (paper Table 3; `nsfw_retrieval.json`):",
        "",
        format_nsfw_table(found),
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
        "## Training curves",
        "",
        "![training curves](curves.png)",
        "",
        "## Retrieval examples (paper Fig. 3)",
        "",
        "Unsafe text queries against safe and unsafe images:",
        "",
        "![text to image](examples_t2v.png)",
        "",
        "Unsafe image queries against safe and unsafe texts:",
        "",
        "![image to text](examples_v2t.png)",
        "",
        f"Numbers: `results.json`; losses: `{run_dir.name}/train_log.jsonl`; validation: `{run_dir.name}/val_log.jsonl`.",
        "",
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines))


def run_demo(out: str | os.PathLike, *, seed: int = 0, size: DemoSize | None = None, progress: bool = True) -> dict:
    """Run every stage into ``out``; returns the ``results.json`` content."""
    size = size or DemoSize()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock("demo")
    seconds, stage = clock.seconds, clock.stage

    sources = prepare_world(out, seed, size, progress, tag="demo", stage=stage)
    world = Path(sources.world)
    print(f"[demo] Safe-CLIP fine-tuning -> {out / 'run'}", flush=True)
    safe_clip = run_safe_clip(method_inputs("safe-clip", out, sources, seed, size, progress))
    stage("safe-clip")

    print("[demo] evaluation on the test split (Safe-CLIP protocol)", flush=True)
    records, _ = read_quadruplets(Path(sources.test))
    models = {"base": load_clip(sources.base), "safe-clip": safe_clip}
    results = evaluate(models, records, protocols=("safe-clip",), keep_embeddings=True)
    results.write(out)
    found = found_image_retrieval(models, world, records)
    write_nsfw_retrieval(found, out)
    stage("evaluation")

    print(f"[demo] merged model -> {out / 'model'} and report", flush=True)
    save_merged_clip(models["safe-clip"], out / "model")
    run_dir = out / "run"
    plot_training_curves(run_dir, out / "curves.png")
    t2v, v2t = retrieval_examples(records, results.embeddings)
    plot_retrieval_examples(t2v, out / "examples_t2v.png", title="unsafe text -> image")
    plot_retrieval_examples(v2t, out / "examples_v2t.png", title="unsafe image -> text")
    command = "safeclip demo --out " + shlex.quote(str(out)) + f" --seed {seed}"
    stage("export+report")
    write_report(out, results.table(), found, run_dir, seconds, command)
    write_json_atomic(out / "timing.json", {**seconds, "total": sum(seconds.values())})
    print(results.table())
    print(f"[demo] total {sum(seconds.values()):.0f} s; report: {out / 'report.md'}")
    return json.loads((out / "results.json").read_text())


SEED_COLUMNS = [("T->V", "R@1"), ("V->T", "R@1"), ("T*->V+V*", "R@1"), ("T*->V+V*", "NSFW@1"),
                ("V*->T+T*", "R@1"), ("V*->T+T*", "NSFW@1")]


def format_seed_table(summary: dict, seeds: list[int]) -> str:
    return (f"Safe-CLIP protocol in the offline world, mean ± std over seeds {', '.join(map(str, seeds))} (percent).\n\n"
            + metric_table(summary, SEED_COLUMNS))


def run_seeds(out: str | os.PathLike, seeds: list[int], *, size: DemoSize | None = None, progress: bool = True) -> dict:
    """Run the demo once per seed (``out/seed-N``) and write ``out/seeds.json`` and ``out/seeds.md``."""
    out = Path(out)
    per_seed = {seed: run_demo(out / f"seed-{seed}", seed=seed, size=size, progress=progress) for seed in seeds}
    summary = summarize_seeds({s: result["models"] for s, result in per_seed.items()})
    write_json_atomic(out / "seeds.json", {"protocol": "safe-clip", "seeds": seeds, "summary": summary})
    table = format_seed_table(summary, seeds)
    write_text_atomic(out / "seeds.md", table + f"\nReproduce: `safeclip demo --out {out} --seeds {','.join(map(str, seeds))}`\n")
    print(table)
    return summary


def demo_main(out: str, seed: int, seeds: list[int] | None = None) -> int:
    if seeds:
        run_seeds(out, seeds, progress=sys.stderr.isatty())
    else:
        run_demo(out, seed=seed, progress=sys.stderr.isatty())
    return 0
