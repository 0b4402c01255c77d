"""Dataset quality report (paper Table 1 and supplementary Table 7), per category and overall, JSON + Markdown.

Text side (Table 1): % NSFW by each judge (over the texts it could read; unreadable LLM replies are counted
apart), toxicity on the paper's 0-100 scale, semantic coherence CLIP-Sim(t, t*). The paper's judges were a
DistilBERT adult-content classifier, GPT-3.5 and the Perspective API: name the classifier that plays DistilBERT
with ``--adult-classifier`` (a model id you choose: the paper names none). Image side (Table 7, rows with an
``unsafe_image``): % unsafe by each image judge (NudeNet, Q16) and image-text CLIP-Sim(v*, t*).

    safeclip datagen report --rows runs/visu/images/quadruplets.jsonl --judge openai:gpt-3.5-turbo@https://api.openai.com/v1 \
        --adult-classifier MODEL_ID@LABEL --toxicity hf:unitary/toxic-bert@toxic --image-judge nudenet \
        --image-judge q16-pickle:Q16/data/ViT-L-14/prompts.p@openai/clip-vit-large-patch14 --clip openai/clip-vit-large-patch14 --out runs/visu/report
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.errors import DataError, MissingFileError


def _rate(values: list, idx: list[int]) -> tuple[float, int]:
    """% True among the readable (non-None) values at ``idx``, and how many were unreadable."""
    read = [values[i] for i in idx if values[i] is not None]
    return 100.0 * sum(bool(v) for v in read) / max(1, len(read)), len(idx) - len(read)


def _summary(idx: list[int], flags: dict[str, list], columns: dict[str, list[float] | None]) -> dict:
    out: dict = {"n": len(idx)}
    for name, values in flags.items():
        out[f"nsfw_rate[{name}]"], unreadable = _rate(values, idx)
        if unreadable:
            out[f"unreadable[{name}]"] = unreadable
    for key, values in columns.items():
        if values is not None:
            out[key] = sum(values[i] for i in idx) / max(1, len(idx))
    return out


def image_scores(rows: list[dict], root: Path, image_judges: list, clip_bundle=None) -> tuple[dict, list | None]:
    """Per image judge, unsafe verdicts of each row's ``unsafe_image`` (paths relative to ``root``), and the
    cosine similarity of each image with its ``unsafe_text`` under ``clip_bundle`` (None without one)."""
    paths = [root / r["unsafe_image"] for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} unsafe images are missing, e.g. {missing[0]}; give the "
                               "quadruplets.jsonl of `datagen images` in its own folder")
    flags = {getattr(j, "name", f"image_judge{k}"): [bool(x) for x in j(paths)] for k, j in enumerate(image_judges)}
    sims = None
    if clip_bundle is not None:
        import torch.nn.functional as F
        from PIL import Image

        from safeclip.models.clip import encode_images, encode_texts

        images = []
        for p in paths:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        v = encode_images(clip_bundle.vision, clip_bundle.image_processor, images)
        t = encode_texts(clip_bundle.text, clip_bundle.tokenizer, [r["unsafe_text"] for r in rows])
        sims = F.cosine_similarity(v, t, dim=-1).tolist()
    return flags, sims


def quality_report(rows: list[dict], judges: list, toxicity=None, clip_bundle=None, *, image_judges=(),
                   image_root: str | Path | None = None, roles: dict[str, str] | None = None) -> dict:
    """Table-1 (and, with ``image_judges`` or a CLIP on rows with ``unsafe_image``, Table-7) numbers for rows
    ``{"safe_text", "unsafe_text", "category"?, "unsafe_image"?}``: overall and per category. ``roles`` maps a
    judge name to the paper judge it plays (e.g. the DistilBERT classifier)."""
    if not rows:
        raise DataError("the quality report needs at least one row with unsafe_text")
    for i, r in enumerate(rows):
        if not isinstance(r.get("unsafe_text"), str):
            raise DataError(f"row {i} has no 'unsafe_text'; give the generated captions file")
    texts = [r["unsafe_text"] for r in rows]
    flags = {judge.name: [None if x is None else bool(x) for x in judge(texts)] for judge in judges}
    columns: dict[str, list[float] | None] = {
        "toxicity": [100.0 * float(x) for x in toxicity(texts)] if toxicity is not None else None}
    if clip_bundle is not None:
        from safeclip.datagen.preferences import clip_similarity

        columns["clip_sim"] = clip_similarity(clip_bundle, [r.get("safe_text", "") for r in rows], texts).tolist()
    with_images = image_root is not None and all(r.get("unsafe_image") for r in rows)
    if with_images and (image_judges or clip_bundle is not None):
        image_flags, columns["image_text_clip_sim"] = image_scores(rows, Path(image_root), list(image_judges),
                                                                   clip_bundle)
        flags.update({f"image:{name}": values for name, values in image_flags.items()})
        if len(image_flags) > 1:
            flags["image:any"] = [any(v[i] for v in image_flags.values()) for i in range(len(rows))]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[str(r.get("category") or "unknown")].append(i)
    return {"overall": _summary(list(range(len(rows))), flags, columns),
            "per_category": {c: _summary(groups[c], flags, columns) for c in sorted(groups)},
            "judges": [j.name for j in judges], "image_judges": [getattr(j, "name", "") for j in image_judges],
            "roles": dict(roles or {}), "toxicity": getattr(toxicity, "name", None), "toxicity_scale": "0-100",
            "clip": getattr(clip_bundle, "name", None)}


def format_quality_markdown(report: dict) -> str:
    groups = [report["overall"], *report["per_category"].values()]
    keys = list(dict.fromkeys(k for values in groups for k in values if k != "n"))
    lines = ["Judge roles: " + "; ".join(f"`{j}` plays {r}" for j, r in report["roles"].items()), ""] \
        if report.get("roles") else []
    lines += ["| group | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for group, values in [("overall", report["overall"]), *report["per_category"].items()]:
        cells = []
        for k in keys:
            value = values.get(k)
            cells.append("-" if value is None else f"{value:.0f}" if k.startswith("unreadable")
                         else f"{value:.3f}" if "clip_sim" in k else f"{value:.1f}")
        lines.append(f"| {group} | {values['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_quality(out_dir: str | Path, report: dict) -> Path:
    """Write ``quality.json`` and ``quality.md`` into ``out_dir``; returns the Markdown path."""
    out = Path(out_dir)
    write_json_atomic(out / "quality.json", report)
    return write_text_atomic(out / "quality.md", "# Generated data quality (paper Table 1 and Table 7 columns)\n\n"
                             "Rates in %, toxicity on 0-100, CLIP-Sim cosine; unreadable = LLM replies that were "
                             "neither yes nor no (left out of that judge's rate).\n\n"
                             + format_quality_markdown(report))
