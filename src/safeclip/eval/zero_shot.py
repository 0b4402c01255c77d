"""Zero-shot classification accuracy with prompt templates: the utility that safety must not cost.

    from safeclip.eval.zero_shot import zero_shot_accuracy, world_zero_shot
    zero_shot_accuracy(image_emb, class_text_emb, labels)     # tensors -> accuracy %
    world_zero_shot(bundle, "demo/world")                      # {"shape": %, "colour": %, "mean": %}

CLIP's recipe (Radford et al. 2021, prompt ensembling): each class c has T prompts (templates filled
with its name); their text embeddings are L2-normalised, averaged and normalised again into one
class vector w_c. An image is assigned argmax_c cos(image, w_c); accuracy is the % of images whose
label wins. Ties go to the lowest class index.

In the offline world (``safeclip.world``), the labelled images are the *safe* test images; the tasks
are the first object's shape (6 classes) and colour (8 classes), from each row's ``attributes``.
Real data: any folder of ``class_name/*.jpg`` via :func:`folder_zero_shot` (labels from folder names).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from safeclip.data.quadruplets import read_rows
from safeclip.eval.embed import encode_image_files
from safeclip.errors import ConfigError, DataError, MissingFileError
from safeclip.models.clip import ClipBundle, encode_images, encode_texts

PROTOCOL = "zero-shot: prompt-ensembled class embeddings, top-1 accuracy on labelled safe images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def class_embeddings(template_emb: torch.Tensor) -> torch.Tensor:
    """``(C, T, D)`` prompt embeddings -> ``(C, D)`` unit class vectors (normalise, mean over T, normalise)."""
    if template_emb.ndim != 3:
        raise ValueError(f"class embeddings need (classes, templates, dim) = 3 dims, got shape {tuple(template_emb.shape)}")
    return F.normalize(F.normalize(template_emb.float(), dim=-1).mean(1), dim=-1)


def zero_shot_predictions(image_emb: torch.Tensor, class_text_emb: torch.Tensor) -> torch.Tensor:
    """Predicted class ``(N,)`` of ``image_emb (N, D)`` against ``class_text_emb (C, T, D)`` or ``(C, D)``."""
    classes = class_embeddings(class_text_emb) if class_text_emb.ndim == 3 else F.normalize(class_text_emb.float(), dim=-1)
    return (F.normalize(image_emb.float(), dim=-1) @ classes.T).argmax(dim=1)  # argmax: first index on ties


def zero_shot_accuracy(image_emb: torch.Tensor, class_text_emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent. ``labels (N,)``: class index of each image."""
    if image_emb.shape[0] != labels.shape[0] or image_emb.shape[0] == 0:
        raise ValueError(f"zero-shot: {image_emb.shape[0]} images but {labels.shape[0]} labels (need the same, > 0)")
    n_classes = class_text_emb.shape[0]
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"zero-shot: labels must lie in [0, {n_classes}) (one per class name)")
    return float((zero_shot_predictions(image_emb, class_text_emb) == labels).double().mean() * 100)


def encode_class_prompts(bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``(C, T, D)`` text embeddings of every template filled with every class name."""
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("zero-shot templates must be a non-empty list of strings with a '{}' for the class name")
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(bundle.text, bundle.tokenizer, prompts)
    return emb.view(len(classnames), len(templates), -1)


def classify_images(bundle: ClipBundle, images: list | None, labels: Sequence[str], classnames: Sequence[str],
                    templates: Sequence[str], *, image_emb: torch.Tensor | None = None) -> float:
    """Accuracy (%) of ``bundle`` on PIL ``images`` (or their ``image_emb (N, D)``) with string ``labels``
    drawn from ``classnames``."""
    index = {c: i for i, c in enumerate(classnames)}
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise DataError(f"zero-shot: labels {unknown[:5]} are not among the class names {list(classnames)[:10]}")
    if image_emb is None:
        image_emb = encode_images(bundle.vision, bundle.image_processor, images)
    return zero_shot_accuracy(image_emb, encode_class_prompts(bundle, classnames, templates),
                              torch.tensor([index[lab] for lab in labels]))


def world_tasks() -> dict[str, tuple[list[str], list[str]]]:
    """The world's zero-shot tasks: attribute -> (class names, templates in the world's own language)."""
    from safeclip.world.scenes import COLOURS, SHAPES, SIZES

    shape_templates = [f"a {size} {colour} {{}}" for size in SIZES for colour in ("red", "blue", "green", "yellow")]
    colour_templates = [f"a {size} {{}} {shape}" for size in SIZES for shape in SHAPES]
    return {"shape": (list(SHAPES), shape_templates), "colour": (list(COLOURS), colour_templates)}


def world_zero_shot(bundle: ClipBundle, world_dir: str | os.PathLike, *, split: str = "test",
                    max_images: int = 0) -> dict[str, float]:
    """Shape and colour accuracy (%) on the world's safe ``split`` images, and their mean."""
    world = Path(world_dir)
    rows = read_rows(world / f"{split}.jsonl")
    rows = [r for r in rows if "attributes" in r]
    if not rows:
        raise DataError(f"{world / f'{split}.jsonl'} has no rows with 'attributes'; rebuild it with `safeclip world build`")
    if max_images:
        rows = rows[:max_images]
    image_emb = encode_image_files(bundle.vision, bundle.image_processor, [world / r["safe_image"] for r in rows])
    out = {}
    for attribute, (classnames, templates) in world_tasks().items():
        out[attribute] = classify_images(bundle, None, [r["attributes"][attribute] for r in rows], classnames,
                                         templates, image_emb=image_emb)
    out["mean"] = sum(out.values()) / len(out)
    return out


def folder_zero_shot(bundle: ClipBundle, folder: str | os.PathLike,
                     templates: Sequence[str] = ("a photo of a {}.",)) -> float:
    """Accuracy (%) on an image folder laid out as ``folder/<class name>/<image>`` (real data)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"zero-shot image folder {folder} does not exist (expected folder/<class>/<image>)")
    classnames = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(c, p) for c in classnames for p in sorted((folder / c).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(classnames) < 2 or not files:
        raise DataError(f"{folder} needs at least two class sub-folders holding images")
    image_emb = encode_image_files(bundle.vision, bundle.image_processor, [p for _, p in files])  # streamed
    return classify_images(bundle, None, [c.replace("_", " ") for c, _ in files],
                           [c.replace("_", " ") for c in classnames], templates, image_emb=image_emb)
