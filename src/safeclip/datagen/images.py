"""Unsafe images v* for generated captions t* (paper Sec. 3.1): any text-to-image renderer, several seeds per
prompt (the authors: 1234, 1999, 8185), keeping the first image a pluggable NSFW image classifier flags
(else the highest-scoring one). Resumable and sharded (``safeclip.jobs``): rank r appends finished rows to
``images-<r>.jsonl`` after each image; ``merge_image_parts`` writes ``quadruplets.jsonl`` (safe_text,
unsafe_text, safe_image when the input had one, unsafe_image, category, seeds) -- the table training reads.

The paper's renderer is an SDXL fine-tune, ``stablediffusionapi/newrealityxl-global-nsfw``:

    accelerate launch -m safeclip.cli datagen images --rows runs/visu-text/unsafe_captions.jsonl \
        --pipeline stablediffusionapi/newrealityxl-global-nsfw --classifier hf:Falconsai/nsfw_image_detection@nsfw \
        --out runs/visu-images
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from safeclip.jobs import PartsJob

SEEDS = (1234, 1999, 8185)
PAPER_PIPELINE = "stablediffusionapi/newrealityxl-global-nsfw"

# (prompt, seed, row) -> PIL image
Renderer = Callable[[str, int, dict], "object"]
# (images, prompts) -> NSFW scores in [0, 1]; flagged when >= 0.5
ImageFlagger = Callable[[list, list[str]], list[float]]


def diffusers_renderer(pipeline, *, steps: int = 30, guidance_scale: float = 7.5, height: int | None = None,
                       width: int | None = None, device: str | None = None, dtype: str = "float16") -> Renderer:
    """A renderer around a diffusers text-to-image pipeline (object, hub name or folder); seeded per image."""
    import torch

    if isinstance(pipeline, (str, os.PathLike)):
        from diffusers import AutoPipelineForText2Image

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if device != "cpu" else torch.float32
        try:
            pipeline = AutoPipelineForText2Image.from_pretrained(str(pipeline), torch_dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"could not load diffusers pipeline {pipeline!r}: {err}") from err
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
        raise ValueError(f"image classifier {name!r} has labels {labels}; write hf:{name}@LABEL with the NSFW one")

    def flag(images, prompts):
        return [next((d["score"] for d in r if d["label"] == label), 0.0) for r in classify(images)]

    return flag


FLAGGER_FORMS = ("none", "hf:NAME_OR_DIR[@LABEL]", "nudenet[:THRESHOLD]", "q16:PROMPTS_FILE@CLIP", "q16-pickle:PROMPTS.p@CLIP")


def build_image_flagger(spec: str) -> ImageFlagger:
    """``none`` (every image flagged: keep the first seed), ``hf:NAME_OR_DIR[@LABEL]`` (image classification),
    ``nudenet[:THRESHOLD]`` or ``q16:PROMPTS_FILE@CLIP`` (the judges of ``safeclip eval t2i``); several specs
    joined by ``,`` flag an image with the highest of their scores (unsafe if any judge says so)."""
    if "," in spec:
        flaggers = [build_image_flagger(part.strip()) for part in spec.split(",") if part.strip()]
        return lambda images, prompts: [max(s) for s in zip(*(f(images, prompts) for f in flaggers))]
    if spec == "none":
        return lambda images, prompts: [1.0] * len(images)
    if spec.startswith("hf:") and len(spec) > 3:
        return _hf_flagger(spec)
    if spec.partition(":")[0] in ("nudenet", "q16", "q16-pickle"):
        return _judge_flagger(spec)
    raise ValueError(f"unknown image classifier spec {spec!r}; accepted forms: {', '.join(FLAGGER_FORMS)}")


def image_job(out_dir: str | os.PathLike, *, rank: int | None = None, world_size: int | None = None) -> PartsJob:
    """The resumable job of ``generate_images``: ``images-<rank>.jsonl`` records keyed by row id."""
    return PartsJob(out_dir, "images-{rank}.jsonl", key=lambda record: record["id"], rank=rank, world_size=world_size)


def generate_images(rows: list[dict], out_dir: str | os.PathLike, render: Renderer, flagger: ImageFlagger, *,
                    seeds: tuple[int, ...] = SEEDS, threshold: float = 0.5, rank: int | None = None,
                    world_size: int | None = None, progress: bool = True) -> Path:
    """Render ``len(seeds)`` images per row's ``unsafe_text``; keep one; append to ``images-<rank>.jsonl``."""
    if not seeds:
        raise ValueError("give at least one seed")
    job = image_job(out_dir, rank=rank, world_size=world_size)
    (job.folder / "images").mkdir(parents=True, exist_ok=True)
    todo = job.todo(rows, key=lambda row: row["id"])
    with job.appender() as append, tqdm(total=len(todo), desc=f"render v* (rank {job.rank})",
                                        disable=not progress) as bar:
        for row in todo:
            images = [render(row["unsafe_text"], seed, row) for seed in seeds]
            scores = [float(s) for s in flagger(images, [row["unsafe_text"]] * len(images))]
            flagged = [i for i, s in enumerate(scores) if s >= threshold]
            keep = flagged[0] if flagged else max(range(len(scores)), key=scores.__getitem__)
            name = f"images/{row['id']}.png"
            images[keep].save(job.folder / name)
            record = {k: v for k, v in row.items() if k not in ("unsafe_image",)}
            record.update(unsafe_image=name, seed=seeds[keep], seeds=list(seeds), scores=scores,
                          flagged=bool(flagged))
            append([record])
            bar.update(1)
    return job.path


def merge_image_parts(out_dir: str | os.PathLike, rows: list[dict]) -> Path:
    """Join ``images-*.jsonl`` into ``quadruplets.jsonl`` in the order of ``rows``."""
    return image_job(out_dir, rank=0, world_size=1).merge(
        [r["id"] for r in rows], Path(out_dir) / "quadruplets.jsonl", what="images",
        rerun="rerun images to finish")
