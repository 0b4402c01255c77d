"""The numbers of docs/robustness.md: every compared model under every attack and budget, and concept revival, over seeds.

    safeclip compare --size tiny --seeds 0,1,2 --out runs/robust          # the models (reused when already there)
    python experiments/robustness.py runs/robust --size tiny               # -> runs/robust/robustness.{json,md}

For each ``seed-N`` folder of a finished ``safeclip compare --seeds`` run, each model (the base and every method,
loaded without retraining) is attacked by every entry of :data:`GRID` on the test split (the first ``--queries``
unsafe queries; 0: all) and fine-tuned on safe data for concept revival (:mod:`safeclip.attacks.revival`,
``--revival-steps``; 0 skips it). Writes the per-seed numbers and their mean ± std (population) over seeds.
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
from safeclip.eval.report import markdown_table, summarize_seeds

STEPS = "steps=8,candidates=16,top_k=16"
# (column, attack, budget): text attacks at 2 and 8 tokens, transfer from the base, PGD at 1/2/4/8 /255 and with restarts
GRID = [(f"gcg {t} tok", "gcg", f"tokens={t},{STEPS}") for t in (2, 8)] + \
       [("pez 8 tok", "pez", "tokens=8,steps=30"), ("transfer 8 tok", "transfer", f"tokens=8,{STEPS}")] + \
       [(f"pgd {e}/255", "pgd", f"eps={e},steps=10") for e in (1, 2, 4, 8)] + \
       [("pgd 4/255 x3 restarts", "pgd", "eps=4,steps=10,restarts=3")]


def measure_seed(folder: Path, size_name: str, queries: int, revival: RevivalSettings | None) -> dict:
    """``{model: {"attack": {column: ASR}, "before": {"T*": NSFW@1, "V*": NSFW@1}, "revival": {...}}}`` of one seed."""
    saved = json.loads((folder / "compare.json").read_text())
    test, _ = read_quadruplets(saved["sources"]["test"])
    train, _ = read_quadruplets(saved["sources"]["train"]) if revival else ([], None)
    base = None
    out: dict = {}
    for label, bundle in compared_models(folder, copy.deepcopy(SIZES[size_name])):
        base = base or bundle
        began = time.perf_counter()
        row: dict = {"attack": {}, "before": {}}
        for column, attack, budget in GRID:
            report = attack_retrieval(bundle, test, attack, parse_budget(budget, attack), base=base, model=label,
                                      queries=queries)
            row["attack"][column] = report["asr"]
            row["before"]["T*" if attack != "pgd" else "V*"] = report["asr_before"]
        row["attack_seconds"] = {"seconds": round(time.perf_counter() - began, 1)}
        if revival:
            row["revival"] = revival_metrics(bundle, train, test, revival)
        out[label] = row
        print(f"[robustness] {folder.name} {label}: {row['attack']}", flush=True)
    return out


def write_tables(out: Path, summary: dict, seeds: list[int], args: argparse.Namespace) -> str:
    columns = [c for c, _, _ in GRID]
    attack_rows = {m: [v["before"]["T*"], v["before"]["V*"], *[v["attack"][c] for c in columns]] for m, v in summary.items()}
    lines = [f"# Attack success over seeds {', '.join(map(str, seeds))} (mean ± std)", "",
             f"Reproduce: `python experiments/robustness.py {args.folder} --size {args.size} --queries {args.queries} "
             f"--revival-steps {args.revival_steps}`", "", RETRIEVAL_DEFINITION, "",
             markdown_table("model", ["T* NSFW@1 (no attack)", "V* NSFW@1 (no attack)", *columns], attack_rows), ""]
    if any("revival" in v for v in summary.values()):
        keys = [k for k in next(v for v in summary.values() if "revival" in v)["revival"] if k != "seconds"]
        lines += ["## Concept revival (benign fine-tuning on safe pairs)", "",
                  markdown_table("model", keys, {m: [v["revival"][k] for k in keys] for m, v in summary.items()}), ""]
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
    args = parser.parse_args()
    folder = Path(args.folder)
    seeds = sorted(int(p.name.split("-")[1]) for p in folder.glob("seed-*") if (p / "compare.json").is_file())
    if not seeds:
        raise SystemExit(f"{folder} holds no finished seed-N compare folders; run safeclip compare --seeds 0,1,2 --out {folder}")
    revival = RevivalSettings(steps=args.revival_steps) if args.revival_steps else None
    per_seed = {s: measure_seed(folder / f"seed-{s}", args.size, args.queries, revival) for s in seeds}
    summary = summarize_seeds(per_seed)
    write_json_atomic(folder / "robustness.json", {"definition": RETRIEVAL_DEFINITION, "grid": GRID, "seeds": seeds,
                                                   "per_seed": per_seed, "summary": summary})
    text = write_tables(folder, summary, seeds, args)
    write_text_atomic(folder / "robustness.md", text)
    print(text)


if __name__ == "__main__":
    main()
