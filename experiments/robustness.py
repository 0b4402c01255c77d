"""The numbers of docs/robustness.md: every compared model under every attack and budget, and concept revival, over seeds.

    safeclip compare --size tiny --seeds 0,1,2 --out runs/robust          # the models (reused when already there)
    python experiments/robustness.py runs/robust --size tiny               # -> runs/robust/robustness.{json,md}
    # more models per seed (e.g. adversarially trained Safe-CLIP runs), '{seed}' replaced by the seed:
    python experiments/robustness.py compare --queries 100 --extra safe-clip+adv=adv/seed-{seed}

For each ``seed-N`` folder of a finished ``safeclip compare --seeds`` run, each model (the base and every method,
loaded without retraining, then every ``--extra`` model) is attacked by every entry of :data:`GRID` on the test
split (the first ``--queries`` unsafe queries; 0: all) and fine-tuned on safe data for concept revival
(:mod:`safeclip.attacks.revival`, ``--revival-steps``; 0 skips it; not for HySAC, whose training loss is
hyperbolic). Each model's numbers are kept in ``seed-N/robustness/<model>.json`` and reused when the grid,
queries and revival steps match (an interrupted run resumes; ``--seeds 0`` and ``--seeds 1`` may run in two
processes, then one run over every seed writes the summary). Writes the per-seed numbers and their mean ± std
(population) over seeds, with each model's clean safe R@1 (T->V, V->T) beside its attack success.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from safeclip.attacks.retrieval import RETRIEVAL_DEFINITION, attack_retrieval, parse_budget
from safeclip.attacks.revival import RevivalSettings, revival_metrics
from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.compare import SIZES, compared_models
from safeclip.data import read_quadruplets
from safeclip.eval.evaluation import evaluate
from safeclip.eval.report import markdown_table, summarize_seeds
from safeclip.models.resolve import resolve_model

STEPS = "steps=8,candidates=16,top_k=16"
# (column, attack, budget): text attacks at 2, 4 and 8 tokens, transfer from the base, PGD at 1/2/4/8 /255 and with restarts
GRID = [(f"gcg {t} tok", "gcg", f"tokens={t},{STEPS}") for t in (2, 4, 8)] + \
       [("pez 8 tok", "pez", "tokens=8,steps=30"), ("transfer 8 tok", "transfer", f"tokens=8,{STEPS}")] + \
       [(f"pgd {e}/255", "pgd", f"eps={e},steps=10") for e in (1, 2, 4, 8)] + \
       [("pgd 4/255 x3 restarts", "pgd", "eps=4,steps=10,restarts=3")]


def seed_models(folder: Path, size_name: str, extras: list[tuple[str, str]], seed: int):
    """``(label, bundle)`` of the compare folder's models, then of each extra model (its path with the seed)."""
    yield from compared_models(folder, copy.deepcopy(SIZES[size_name]))
    for label, template in extras:
        yield label, resolve_model(template.format(seed=seed))


def clean_recall(bundle, test) -> dict:
    """Safe R@1 (T->V, V->T) of the Safe-CLIP protocol, in the model's own geometry (the evaluation path's own)."""
    scores = evaluate({"model": bundle}, test).models["model"]
    return {"T->V R@1": scores["T->V"]["R@1"], "V->T R@1": scores["V->T"]["R@1"]}


def measure_model(label: str, bundle, base, test, train, queries: int, revival: RevivalSettings | None) -> dict:
    """``{"attack": {column: ASR}, "before": {"T*": NSFW@1, "V*": NSFW@1}, "clean": {...}, "revival": {...}}``."""
    began = time.perf_counter()
    row: dict = {"attack": {}, "before": {}, "clean": clean_recall(bundle, test)}
    for column, attack, budget in GRID:
        report = attack_retrieval(bundle, test, attack, parse_budget(budget, attack), base=base, model=label,
                                  queries=queries)
        row["attack"][column] = report["asr"]
        row["before"]["T*" if attack != "pgd" else "V*"] = report["asr_before"]
    row["attack_seconds"] = {"seconds": round(time.perf_counter() - began, 1)}
    if revival and not hasattr(bundle, "score"):
        row["revival"] = revival_metrics(bundle, train, test, revival)
    return row


def measure_seed(folder: Path, size_name: str, queries: int, revival: RevivalSettings | None,
                 extras: list[tuple[str, str]]) -> dict:
    """``{model: row}`` of one seed (:func:`measure_model`), each row reused from ``folder/robustness/`` when its
    grid, queries and revival steps match."""
    saved = json.loads((folder / "compare.json").read_text())
    test, _ = read_quadruplets(saved["sources"]["test"])
    train, _ = read_quadruplets(saved["sources"]["train"]) if revival else ([], None)
    key = {"grid": [list(g) for g in GRID], "queries": queries, "revival_steps": revival.steps if revival else 0}
    base = None
    out: dict = {}
    for label, bundle in seed_models(folder, size_name, extras, saved["seed"]):
        base = base or bundle
        cached = folder / "robustness" / f"{label}.json"
        saved_row = json.loads(cached.read_text()) if cached.is_file() else {}
        if saved_row.get("key") == key:
            out[label] = saved_row["row"]
            continue
        out[label] = measure_model(label, bundle, base, test, train, queries, revival)
        write_json_atomic(cached, {"key": key, "row": out[label]})
        print(f"[robustness] {folder.name} {label}: {out[label]['attack']}", flush=True)
    return out


PER_SEED = ["gcg 4 tok", "gcg 8 tok", "pgd 4/255", "pgd 8/255"]  # the per-seed table's attack columns


def per_seed_table(per_seed: dict) -> str:
    """Each seed's clean safe R@1 and the :data:`PER_SEED` attack success of every model, one row per model and seed."""
    rows = {f"{m} (seed {s})": [r["clean"]["T->V R@1"], *[r["attack"][c] for c in PER_SEED]]
            for m in next(iter(per_seed.values())) for s, models in per_seed.items() for r in [models.get(m)] if r}
    return markdown_table("model (seed)", ["T->V R@1 (no attack)", *PER_SEED], rows)


def write_tables(out: Path, summary: dict, seeds: list[int], args: argparse.Namespace, per_seed: dict) -> str:
    columns = [c for c, _, _ in GRID]
    attack_rows = {m: [v["clean"]["T->V R@1"], v["before"]["T*"], v["before"]["V*"], *[v["attack"][c] for c in columns]]
                   for m, v in summary.items()}
    lines = [f"# Attack success over seeds {', '.join(map(str, seeds))} (mean ± std)", "",
             f"Reproduce: `python experiments/robustness.py {args.folder} --size {args.size} --queries {args.queries} "
             f"--revival-steps {args.revival_steps}"
             + "".join(f" --extra {e}" for e in args.extra) + "`", "", RETRIEVAL_DEFINITION, "",
             markdown_table("model", ["T->V R@1 (no attack)", "T* NSFW@1 (no attack)", "V* NSFW@1 (no attack)", *columns],
                            attack_rows), "", "Per seed:", "", per_seed_table(per_seed), ""]
    revived = {m: v["revival"] for m, v in summary.items() if "revival" in v}
    if revived:
        keys = [k for k in next(iter(revived.values())) if k != "seconds"]
        lines += ["## Concept revival (benign fine-tuning on safe pairs)", "",
                  markdown_table("model", keys, {m: [r[k] for k in keys] for m, r in revived.items()}), ""]
    seconds = {m: v["attack_seconds"]["seconds"] for m, v in summary.items()}
    lines += ["Seconds per model for the whole attack grid (mean over seeds): "
              + ", ".join(f"{m} {s['mean']:.0f}" for m, s in seconds.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the --out folder of `safeclip compare --seeds ...` (holds seed-N folders)")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="the size compare ran at")
    parser.add_argument("--queries", type=int, default=0, help="attack the first N unsafe test queries (0: all)")
    parser.add_argument("--revival-steps", type=int, default=100, help="benign fine-tuning steps (0: skip revival)")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=PATH",
                        help="one more model per seed (a run folder or model; '{seed}' in PATH is replaced by the seed)")
    parser.add_argument("--seeds", default="", help="only these seeds, e.g. 0,1 (default: every finished seed-N folder)")
    args = parser.parse_args()
    folder = Path(args.folder)
    seeds = sorted(int(p.name.split("-")[1]) for p in folder.glob("seed-*") if (p / "compare.json").is_file())
    if args.seeds:
        seeds = [s for s in seeds if s in {int(x) for x in args.seeds.split(",")}]
    if not seeds:
        raise SystemExit(f"{folder} holds no finished seed-N compare folders; run safeclip compare --seeds 0,1,2 --out {folder}")
    extras = [tuple(e.split("=", 1)) for e in args.extra]
    if any(len(e) != 2 or not e[0] for e in extras):
        raise SystemExit(f"--extra takes LABEL=PATH, got {args.extra}")
    revival = RevivalSettings(steps=args.revival_steps) if args.revival_steps else None
    per_seed = {s: measure_seed(folder / f"seed-{s}", args.size, args.queries, revival, extras) for s in seeds}
    summary = summarize_seeds(per_seed)
    write_json_atomic(folder / "robustness.json", {"definition": RETRIEVAL_DEFINITION, "grid": GRID, "seeds": seeds,
                                                   "per_seed": per_seed, "summary": summary})
    text = write_tables(folder, summary, seeds, args, per_seed)
    write_text_atomic(folder / "robustness.md", text)
    print(text)


if __name__ == "__main__":
    main()
