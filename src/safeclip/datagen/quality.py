"""Dataset quality report (paper Table 1): % NSFW by each judge, toxicity, and semantic coherence
CLIP-Sim(t, t*), per category and overall, as JSON + Markdown.

    safeclip datagen report --rows runs/visu-text/unsafe_captions.jsonl --judge lexicon --judge hf:my-nsfw-clf \
        --toxicity hf:unitary/toxic-bert@toxic --clip openai/clip-vit-large-patch14 --out runs/visu-report
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from safeclip.checkpoint import write_json_atomic, write_text_atomic


def _summary(idx: list[int], flags: dict[str, list[bool]], tox: list[float] | None, sims: list[float] | None) -> dict:
    out: dict = {"n": len(idx)}
    for name, values in flags.items():
        out[f"nsfw_rate[{name}]"] = 100.0 * sum(values[i] for i in idx) / max(1, len(idx))
    if tox is not None:
        out["toxicity"] = sum(tox[i] for i in idx) / max(1, len(idx))
    if sims is not None:
        out["clip_sim"] = sum(sims[i] for i in idx) / max(1, len(idx))
    return out


def quality_report(rows: list[dict], judges: list, toxicity=None, clip_bundle=None) -> dict:
    """Table-1 numbers for rows ``{"safe_text", "unsafe_text", "category"?}``: overall and per category."""
    if not rows:
        raise ValueError("the quality report needs at least one row with unsafe_text")
    for i, r in enumerate(rows):
        if not isinstance(r.get("unsafe_text"), str):
            raise ValueError(f"row {i} has no 'unsafe_text'; give the generated captions file")
    texts = [r["unsafe_text"] for r in rows]
    flags = {judge.name: [bool(x) for x in judge(texts)] for judge in judges}
    tox = [float(x) for x in toxicity(texts)] if toxicity is not None else None
    sims = None
    if clip_bundle is not None:
        from safeclip.datagen.preferences import clip_similarity

        sims = clip_similarity(clip_bundle, [r.get("safe_text", "") for r in rows], texts).tolist()
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[str(r.get("category") or "unknown")].append(i)
    return {"overall": _summary(list(range(len(rows))), flags, tox, sims),
            "per_category": {c: _summary(groups[c], flags, tox, sims) for c in sorted(groups)},
            "judges": list(flags), "toxicity": getattr(toxicity, "name", None),
            "clip": getattr(clip_bundle, "name", None)}


def format_quality_markdown(report: dict) -> str:
    keys = [k for k in report["overall"] if k != "n"]
    lines = ["| group | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for group, values in [("overall", report["overall"]), *report["per_category"].items()]:
        lines.append(f"| {group} | {values['n']} | " + " | ".join(f"{values[k]:.3f}" if "rate" not in k
                                                                    else f"{values[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_quality(out_dir: str | Path, report: dict) -> Path:
    """Write ``quality.json`` and ``quality.md`` into ``out_dir``; returns the Markdown path."""
    out = Path(out_dir)
    write_json_atomic(out / "quality.json", report)
    return write_text_atomic(out / "quality.md", "# Generated data quality (paper Table 1 columns)\n\n"
                             + format_quality_markdown(report))
