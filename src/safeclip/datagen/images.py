"""Unsafe images v* for generated captions t* (paper Sec. 3.1): any text-to-image renderer, up to three seeds per
prompt (the authors: 1234, 1999, 8185), rendered one at a time until a pluggable NSFW image classifier flags
one (else the highest-scoring one is kept); black or failed renders are skipped. Resumable and sharded (``safeclip.jobs``): rank r appends finished rows to
``images-<r>.jsonl`` after each image; ``merge_image_parts`` writes ``quadruplets.jsonl`` (safe_text,
unsafe_text, safe_image when the input had one, unsafe_image, category, seeds) -- the table training reads.

The paper's renderer is an SDXL fine-tune, ``stablediffusionapi/newrealityxl-global-nsfw``:

    accelerate launch -m safeclip.cli datagen images --rows runs/visu-text/unsafe_captions.jsonl \
        --pipeline stablediffusionapi/newrealityxl-global-nsfw --classifier hf:Falconsai/nsfw_image_detection@nsfw \
        --out runs/visu-images
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from safeclip.errors import ConfigError, DataError, MissingFileError
from safeclip.jobs import PartsJob

# Where each image setting comes from (the paper gives none of them but the model):
#   renderer   stablediffusionapi/newrealityxl-global-nsfw: the paper, Sec. 3.1 footnote 2
#   seeds      1234, 1999, 8185, three images per prompt: the authors, aimagelab/safe-clip issue #2 (2024-11-29),
#              which points to the ViSU-Text dataset card for the seeds
#   keep       "one of the three images classified as NSFW by at least one of Q16 and NudeNet": issue #2;
#              keeping the *first* flagged seed (and rendering the next only when needed) is this project's choice
#   steps 30, guidance 7.5, default resolution: this project's choice (diffusers' SDXL defaults are 50 and 5.0)
SEEDS = (1234, 1999, 8185)
PAPER_PIPELINE = "stablediffusionapi/newrealityxl-global-nsfw"
IMAGE_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
IMAGE_SAVE_OPTIONS = {"png": {}, "jpeg": {"quality": 95}, "webp": {"quality": 95}}

# (prompt, seed, row) -> PIL image
Renderer = Callable[[str, int, dict], "object"]
# (images, prompts) -> NSFW scores in [0, 1]; flagged when >= 0.5
ImageFlagger = Callable[[list, list[str]], list[float]]


def diffusers_renderer(pipeline, *, steps: int = 30, guidance_scale: float = 7.5, height: int | None = None,
                       width: int | None = None, device: str | None = None, dtype: str = "float16") -> Renderer:
    """A renderer around a diffusers text-to-image pipeline (object, hub name or folder); seeded per image."""
    import torch

    if isinstance(pipeline, (str, os.PathLike)):
        from safeclip.models.clip import quiet_transformers

        with quiet_transformers():  # diffusers' import names transformers' image processors (torchvision notice)
            from diffusers import AutoPipelineForText2Image

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if device != "cpu" else torch.float32
        try:
            pipeline = AutoPipelineForText2Image.from_pretrained(str(pipeline), torch_dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise MissingFileError(f"could not load diffusers pipeline {pipeline!r}: {err}") from err
        pipeline = pipeline.to(device)
        if hasattr(pipeline, "safety_checker"):
            pipeline.safety_checker = None  # the point is to render unsafe images for training data
    device = device or str(getattr(pipeline, "device", "cpu"))
    pipeline.set_progress_bar_config(disable=True)

    def render(prompt: str, seed: int, row: dict):
        generator = torch.Generator(device=device if device.startswith("cuda") else "cpu").manual_seed(seed)
        kwargs = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "generator": generator}
        if height and width:
            kwargs.update(height=height, width=width)
        return pipeline(prompt, **kwargs).images[0]

    return render


def _judge_flagger(spec: str) -> ImageFlagger:
    """NudeNet / Q16 (``safeclip.eval.image_judges``) as a flagger: 1.0 when the judge calls the image unsafe."""
    import tempfile

    from safeclip.eval.image_judges import build_image_judge

    judge = build_image_judge(spec)

    def flag(images, prompts):
        with tempfile.TemporaryDirectory() as tmp:  # the judges read image files
            paths = [Path(tmp) / f"{i}.png" for i in range(len(images))]
            for image, path in zip(images, paths):
                image.save(path)
            return [1.0 if unsafe else 0.0 for unsafe in judge(paths)]

    return flag


def _hf_flagger(spec: str) -> ImageFlagger:
    from transformers import pipeline

    name, _, label = spec[3:].rpartition("@") if "@" in spec[3:] else (spec[3:], "", "")
    classify = pipeline("image-classification", model=name, top_k=None)
    labels = list(classify.model.config.id2label.values())
    label = label or next((x for x in ("nsfw", "NSFW", "unsafe", "porn") if x in labels), "")
    if label not in labels:
        raise ConfigError(f"image classifier {name!r} has labels {labels}; write hf:{name}@LABEL with the NSFW one")

    def flag(images, prompts):
        return [next((d["score"] for d in r if d["label"] == label), 0.0) for r in classify(images)]

    return flag


FLAGGER_FORMS = ("none", "hf:NAME_OR_DIR[@LABEL]", "nudenet[:THRESHOLD]", "q16:PROMPTS_FILE@CLIP", "q16-pickle:PROMPTS.p@CLIP")


class CategoryFlagger:
    """One flagger per category: the paper's judges by concept, NudeNet for sexual and nudity captions and Q16
    (a broad NSFW classifier) for the rest, so a violence caption keeps its most violent image, not its most
    naked one. ``for_category(category)`` gives the flagger for a row."""

    def __init__(self, routes: dict[str, ImageFlagger], default: ImageFlagger | None) -> None:
        self.routes, self.default = routes, default

    def for_category(self, category: str | None) -> ImageFlagger:
        flagger = self.routes.get(str(category or ""), self.default)
        if flagger is None:
            raise ConfigError(f"no image classifier for category {category!r}; add a default entry (one without "
                              "CATEGORIES=) to --classifier")
        return flagger


def build_image_flagger(spec: str) -> ImageFlagger | CategoryFlagger:
    """``none`` (every image flagged: keep the first seed), ``hf:NAME_OR_DIR[@LABEL]`` (image classification),
    ``nudenet[:THRESHOLD]``, ``q16:PROMPTS_FILE@CLIP`` or ``q16-pickle:PROMPTS.p@CLIP`` (the judges of ``safeclip eval
    t2i``); several specs joined by ``,`` flag an image with the highest of their scores (unsafe if any judge says so). Entries joined
    by ``;`` route by category: ``CATEGORIES=SPEC`` (categories comma-separated) or a bare default ``SPEC``, e.g.
    the paper's judges ``sexual,nudity=nudenet;q16-pickle:Q16/data/ViT-L-14/prompts.p@openai/clip-vit-large-patch14``."""
    if ";" in spec or "=" in spec:
        routes: dict[str, ImageFlagger] = {}
        default = None
        for entry in (e.strip() for e in spec.split(";") if e.strip()):
            categories, sep, inner = entry.rpartition("=") if "=" in entry else ("", "", entry)
            flagger = build_image_flagger(inner.strip())
            if sep:
                routes.update({c.strip(): flagger for c in categories.split(",") if c.strip()})
            else:
                default = flagger
        return CategoryFlagger(routes, default)
    if "," in spec:
        flaggers = [build_image_flagger(part.strip()) for part in spec.split(",") if part.strip()]
        return lambda images, prompts: [max(s) for s in zip(*(f(images, prompts) for f in flaggers))]
    if spec == "none":
        return lambda images, prompts: [1.0] * len(images)
    if spec.startswith("hf:") and len(spec) > 3:
        return _hf_flagger(spec)
    if spec.partition(":")[0] in ("nudenet", "q16", "q16-pickle"):
        return _judge_flagger(spec)
    raise ConfigError(f"unknown image classifier spec {spec!r}; accepted forms: {', '.join(FLAGGER_FORMS)}")


def image_job(out_dir: str | os.PathLike, *, rank: int | None = None, world_size: int | None = None) -> PartsJob:
    """The resumable job of ``generate_images``: ``images-<rank>.jsonl`` records keyed by row id."""
    return PartsJob(out_dir, "images-{rank}.jsonl", key=lambda record: record["id"], rank=rank, world_size=world_size)


def image_failure(image) -> str | None:
    """``black`` for an all-black image (a safety checker's blank, a VAE overflow in fp16), else None."""
    return "black" if max(high for _, high in image.convert("RGB").getextrema()) <= 8 else None


def render_first_flagged(row: dict, render: Renderer, flag: ImageFlagger, seeds: tuple[int, ...],
                         threshold: float) -> dict:
    """Render ``row``'s seeds one at a time and stop at the first image ``flag`` scores >= ``threshold``; black
    renders (and a renderer's None) are skipped. Returns the kept image (None when every seed failed), its seed, whether it
    was flagged, and the score or failure of each rendered seed."""
    scores: dict[int, float | str] = {}
    best = None
    for seed in seeds:
        image = render(row["unsafe_text"], seed, row)
        failure = "failed" if image is None else image_failure(image)
        if failure:
            scores[seed] = failure
            continue
        score = float(flag([image], [row["unsafe_text"]])[0])
        scores[seed] = score
        if best is None or score > best[2]:
            best = (image, seed, score)
        if score >= threshold:
            return {"image": image, "seed": seed, "flagged": True, "scores": scores}
    return {"image": best[0] if best else None, "seed": best[1] if best else None, "flagged": False, "scores": scores}


def generate_images(rows: list[dict], out_dir: str | os.PathLike, render: Renderer,
                    flagger: ImageFlagger | CategoryFlagger, *, seeds: tuple[int, ...] = SEEDS,
                    threshold: float = 0.5, image_format: str = "png", rank: int | None = None,
                    world_size: int | None = None, progress: bool = True) -> Path:
    """Render each row's ``unsafe_text`` seed by seed until one is flagged (the flagger of the row's category for a
    :class:`CategoryFlagger`); keep that image (else the highest-scoring one); append to ``images-<rank>.jsonl``.
    A row whose every seed failed gets ``unsafe_image: null`` and is left out of ``quadruplets.jsonl``."""
    if not seeds:
        raise ConfigError("give at least one seed")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image format {image_format!r}: use {', '.join(IMAGE_FORMATS)}")
    job = image_job(out_dir, rank=rank, world_size=world_size)
    (job.folder / "images").mkdir(parents=True, exist_ok=True)
    todo = job.todo(rows, key=lambda row: row["id"])
    with job.appender() as append, tqdm(total=len(todo), desc=f"render v* (rank {job.rank})",
                                        disable=not progress) as bar:
        for row in todo:
            flag = flagger.for_category(row.get("category")) if isinstance(flagger, CategoryFlagger) else flagger
            kept = render_first_flagged(row, render, flag, seeds, threshold)
            name = None
            if kept["image"] is not None:
                name = f"images/{row['id']}.{IMAGE_FORMATS[image_format]}"
                kept["image"].convert("RGB").save(job.folder / name, **IMAGE_SAVE_OPTIONS[image_format])
            record = {k: v for k, v in row.items() if k not in ("unsafe_image",)}
            record.update(unsafe_image=name, seed=kept["seed"], seeds=list(seeds),
                          scores={str(s): v for s, v in kept["scores"].items()}, renders=len(kept["scores"]),
                          flagged=kept["flagged"])
            append([record])
            bar.update(1)
    return job.path


def merge_image_parts(out_dir: str | os.PathLike, rows: list[dict]) -> Path:
    """Join ``images-*.jsonl`` into ``quadruplets.jsonl`` in the order of ``rows``, without rows whose every seed
    failed (their count and the renders spent go to ``images_report.json``)."""
    from safeclip.checkpoint import write_json_atomic, write_text_atomic

    records = image_job(out_dir, rank=0, world_size=1).ordered([r["id"] for r in rows], what="images",
                                                                rerun="rerun images to finish")
    kept = [r for r in records if r.get("unsafe_image")]
    write_json_atomic(Path(out_dir) / "images_report.json", {
        "rows": len(records), "kept": len(kept), "flagged": sum(bool(r.get("flagged")) for r in kept),
        "renders": sum(r.get("renders", len(r.get("seeds", []))) for r in records),
        "all_seeds_failed": len(records) - len(kept)})
    return write_text_atomic(Path(out_dir) / "quadruplets.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
