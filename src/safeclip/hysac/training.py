"""HySAC's method step for the project's one training loop (``safeclip.train``, ``method: hysac``).

    safeclip train --config configs/vit-l-14_hysac.yaml data.train=visu/train.json data.val=visu/validation.json
    safeclip train --config src/safeclip/recipes/hysac_demo.yaml data.train=w/train.jsonl data.val=w/val.jsonl

The loop, resume, logging and multi-process launch are Safe-CLIP's; this objective changes what a
step trains and how a model is selected (authors' ``hysac/training.py`` and ``validation.py``):

- trained: the LoRA adapters of both encoders and :class:`~safeclip.hysac.model.HyperbolicHead`
  (curvature, per-modality scales, logit scale), clamped after every optimizer step;
- optimizer: AdamW, betas (0.9, 0.98), ``optim.weight_decay`` on the adapters and none on the scalars;
- loss: the seven terms of :mod:`safeclip.hysac.losses` (authors' weights unless ``hysac.weights``);
  no frozen references are needed. With ``loss.gather_across_processes`` the terms see the global
  batch (the authors use each process's local batch: set it false to match them);
- model selection: the sum of R@1 in both directions for (T, V), (T, V*) and (T*, V), ranked by
  hyperbolic distance (authors' ``validation.py`` 127-128);
- ``best/hysac.json``: the head's scalars; when training ends, the safety bounds of
  ``hysac.bounds_split`` measured with the best model are added to it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from safeclip.checkpoint import write_json_atomic
from safeclip.distributed import gather_with_grad, world_size
from safeclip.eval.embed import embed_quadruplets
from safeclip.eval.retrieval import recall_at_k
from safeclip.hysac.evaluate import hysac_metrics, lorentz_similarity
from safeclip.hysac.losses import authors_weights, hysac_objective
from safeclip.hysac.model import FORMAT, HYSAC_FILE, HyperbolicHead, hysac_bundle
from safeclip.hysac.traversal import compute_bounds
from safeclip.models.clip import ClipBundle
from safeclip.train import SafeClipObjective, encode_batch_images, encode_batch_texts

SELECTION_PAIRS = (("safe_text", "safe_image"), ("safe_text", "unsafe_image"), ("unsafe_text", "safe_image"))


def selection_score(emb: dict[str, torch.Tensor], curv: float) -> float:
    """Authors' model selection: sum over (T, V), (T, V*), (T*, V) of R@1 in both directions (-distance ranking)."""
    similarity = lorentz_similarity(curv)
    total = 0.0
    for a, b in SELECTION_PAIRS:
        if a not in emb or b not in emb:
            continue
        targets = torch.arange(emb[a].shape[0])
        total += recall_at_k(emb[a], emb[b], targets, (1,), similarity=similarity)[1]
        total += recall_at_k(emb[b], emb[a], targets, (1,), similarity=similarity)[1]
    return total


class HysacObjective(SafeClipObjective):
    """HySAC's step, optimizer, clamps, validation and ``best/hysac.json`` (see the module docstring)."""

    name = "hysac"
    needs_references = False

    def __init__(self, bundle: ClipBundle, cfg):
        self.cfg = cfg
        self.settings = cfg.hysac
        self.embed_dim = bundle.embed_dim
        self.head = HyperbolicHead(bundle.embed_dim, self.settings.curv_init, self.settings.learn_curv)
        self.weights = dict(self.settings.weights) or authors_weights(self.settings.entailment_weight)

    def modules(self) -> list[torch.nn.Module]:
        return [self.head]

    def optimizer(self, lora_params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        scalars = [p for p in self.head.parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": lora_params, "weight_decay": self.cfg.optim.weight_decay},
                                  {"params": scalars, "weight_decay": 0.0}], lr=self.cfg.optim.lr, betas=(0.9, 0.98))

    def step_losses(self, text_model, vision_model, text_base, vision_base, batch: dict, dtype: torch.dtype,
                    cached_refs: dict | None) -> dict[str, torch.Tensor]:
        features = {**encode_batch_texts(text_model, batch), **encode_batch_images(vision_model, batch, dtype)}
        if self.cfg.loss.gather_across_processes and world_size() > 1:
            features = {name: gather_with_grad(features[name]) for name in sorted(features)}
        device = next(iter(features.values())).device
        # the geometry in float32 whatever the encoders' precision (arcosh / sinh near their clamps)
        with torch.autocast(device_type=device.type, enabled=False):
            points = {name: self.head.lift(value.float(), "text" if name.endswith("_text") else "image")
                      for name, value in features.items()}
            return hysac_objective(
                safe_text=points.get("safe_text"), unsafe_text=points.get("unsafe_text"),
                safe_image=points.get("safe_image"), unsafe_image=points.get("unsafe_image"),
                curv=self.head.curvature(), logit_scale=self.head.logit_scale, weights=self.weights,
                aperture_scale=self.settings.aperture_scale)

    def before_optimizer_step(self, accelerator) -> None:
        """The scalars are not in a DDP module: average their gradients over processes by hand.

        With ``loss.gather_across_processes`` every process differentiates the same global loss, scaled by
        the process count (``safeclip.train.backward_loss``), and the lift runs on the gathered features, so
        each holds P times the scalars' full gradient: the mean is divided by P."""
        processes = accelerator.num_processes
        if processes > 1:
            scale = 1.0 / processes if self.cfg.loss.gather_across_processes else 1.0
            for param in self.head.parameters():
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean") * scale

    def after_optimizer_step(self) -> None:
        self.head.clamp_()

    def embed(self, text_base, vision_base, bundle: ClipBundle, records) -> dict[str, torch.Tensor]:
        model = hysac_bundle(dataclasses.replace(bundle, text=text_base, vision=vision_base), self.head)
        with torch.no_grad():
            return embed_quadruplets(model.text, model.vision, bundle.tokenizer, bundle.image_processor, records,
                                     batch_size=self.cfg.run.eval_batch_size)

    def validate(self, text_base, vision_base, bundle: ClipBundle, records) -> tuple[float, dict]:
        emb = self.embed(text_base, vision_base, bundle, records)
        if "safe_image" not in emb:
            return 0.0, {}
        curv = float(self.head.curvature().detach())
        return selection_score(emb, curv), hysac_metrics(emb, curv=curv)

    def write_best(self, folder: Path) -> None:
        write_json_atomic(folder / HYSAC_FILE, {"format": FORMAT, **self.head.scalars(), "bounds": None,
                                                "embed_dim": self.embed_dim, "base_model": self.cfg.model.name})

    def finish(self, run_dir: Path, val_records: list) -> None:
        """Measure the safety bounds of ``hysac.bounds_split`` with the best model; store them in ``best/hysac.json``."""
        from safeclip.hysac.model import load_hysac, read_hysac_file
        from safeclip.train import read_split

        best_file = run_dir / "best" / HYSAC_FILE
        split = self.settings.bounds_split if (val_records or self.settings.bounds_split == "train") else "train"
        records = val_records if split == "val" else read_split(self.cfg.data.train, self.cfg)[0]
        if not records or not best_file.is_file():
            return
        best = load_hysac(run_dir)
        emb = embed_quadruplets(best.text, best.vision, best.tokenizer, best.image_processor, records,
                                batch_size=self.cfg.run.eval_batch_size)
        write_json_atomic(best_file, {**read_hysac_file(best_file), "bounds": compute_bounds(emb, best.curvature()),
                                      "bounds_split": getattr(self.cfg.data, split)})
