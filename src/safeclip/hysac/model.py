"""The HySAC model: CLIP encoders (LoRA on both) whose projected features are lifted to the hyperboloid.

HySAC (Poppi et al., CVPR 2025; authors' ``hysac/models.py``) keeps CLIP's projected ``text_embeds`` /
``image_embeds`` *unnormalised*, scales them by a learnable per-modality factor ``exp(alpha)`` and maps
them onto the Lorentz hyperboloid of learnable curvature ``-c`` with the exponential map at the origin:
``x = expmap0(exp(alpha) f, c)`` (:mod:`safeclip.hyperbolic`). Parameters and their clamps (authors'
``training.py`` 117-124):

- ``curv``: log c, initialised at log(1), clamped to ``[log(c0/10), log(10 c0)]`` every step;
- ``textual_alpha``, ``visual_alpha``: log scales, initialised at log(D^-1/2), clamped to <= 0;
- ``logit_scale``: initialised at ln(1/0.07), clamped to ``[ln(1/0.07), ln(100)]``.

A HySAC model on disk is one of

- an **export folder**: a merged Hugging Face CLIP folder (``CLIPModel.from_pretrained`` loads its
  Euclidean encoders) plus ``hysac.json`` (curvature, both scales, logit scale, safety bounds);
- a **run folder** (``safeclip train`` with ``method: hysac``): its base model, ``best/`` adapters and
  ``best/hysac.json``;
- the **authors' release** ``hysac_model.pth`` (:func:`load_authors_checkpoint`).

    from safeclip.hysac.model import load_hysac, save_hysac
    model = load_hysac("export/hysac")             # a HysacBundle (a ClipBundle whose encoders lift to H^n)
    x = encode_texts(model.text, model.tokenizer, ["a dog"])   # (1, D) hyperboloid space parts
    save_hysac(model, "export/hysac2")
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from safeclip import hyperbolic as H
from safeclip.checkpoint import write_json_atomic
from safeclip.errors import DataError, MissingFileError
from safeclip.models.clip import ClipBundle, load_clip
from safeclip.models.lora import merge_adapters, save_merged_clip

HYSAC_FILE = "hysac.json"
FORMAT = "safeclip-hysac/1"
LOGIT_SCALE_MIN = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)

# The authors' LoRA (scripts/hysac_train.py 97-111): rank 16, alpha 1 (update scaled by 1/16), dropout 0.1.
AUTHORS_LORA = {"r": 16, "alpha": 1.0, "dropout": 0.1,
                "target_modules": ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"]}


class HyperbolicHead(nn.Module):
    """HySAC's learnable scalars: curvature, per-modality scales and logit scale, and the lift to the hyperboloid.

    Parameter names follow the authors' checkpoint (``curv``, ``textual_alpha``, ``visual_alpha``,
    ``logit_scale``), all log-space scalars.
    """

    def __init__(self, embed_dim: int, curv_init: float = 1.0, learn_curv: bool = True):
        super().__init__()
        if curv_init <= 0:
            raise ValueError(f"curv_init must be positive (the hyperboloid has curvature -c), got {curv_init}")
        self.curv = nn.Parameter(torch.tensor(float(curv_init)).log(), requires_grad=learn_curv)
        self.textual_alpha = nn.Parameter(torch.tensor(embed_dim**-0.5).log())
        self.visual_alpha = nn.Parameter(torch.tensor(embed_dim**-0.5).log())
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_MIN))
        self.curv_bounds = (math.log(curv_init / 10), math.log(curv_init * 10))

    def curvature(self) -> torch.Tensor:
        """c = exp(curv), a 0-d tensor (the hyperboloid's curvature is -c)."""
        return self.curv.exp()

    def lift(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """``features (N, D)`` (projected, unnormalised) -> hyperboloid space parts ``expmap0(exp(alpha) f, c)``."""
        alpha = {"text": self.textual_alpha, "image": self.visual_alpha}[modality]
        return H.expmap0(features * alpha.exp(), self.curvature())

    @torch.no_grad()
    def clamp_(self) -> None:
        """The authors' clamps, applied after every optimizer step (``training.py`` 117-124)."""
        self.curv.clamp_(*self.curv_bounds)
        self.textual_alpha.clamp_(max=0.0)
        self.visual_alpha.clamp_(max=0.0)
        self.logit_scale.clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)

    def scalars(self) -> dict[str, float]:
        """The four parameters as floats (log space, as stored) plus ``curvature`` = c."""
        values = {name: float(getattr(self, name).detach()) for name in ("curv", "textual_alpha", "visual_alpha", "logit_scale")}
        return {**values, "curvature": math.exp(values["curv"])}

    @classmethod
    def from_scalars(cls, scalars: dict, embed_dim: int) -> HyperbolicHead:
        """A head holding ``scalars`` (as written by :meth:`scalars`); clamps keep HySAC's c0 = 1 bounds."""
        head = cls(embed_dim)
        with torch.no_grad():
            for name in ("curv", "textual_alpha", "visual_alpha", "logit_scale"):
                if name not in scalars:
                    raise DataError(f"HySAC scalars lack {name!r} (have {sorted(scalars)}); expected the keys "
                                    "curv, textual_alpha, visual_alpha, logit_scale")
                getattr(head, name).fill_(float(scalars[name]))
        return head.requires_grad_(False)


class HyperbolicEncoder(nn.Module):
    """A CLIP text or vision encoder whose ``text_embeds`` / ``image_embeds`` are hyperboloid space parts.

    It answers the same calls as the wrapped encoder (``encode_token_batch`` / ``encode_pixel_batch``,
    ``embed_quadruplets``), so every embedding path of the project works on it unchanged.
    """

    def __init__(self, encoder: nn.Module, head: HyperbolicHead, modality: str):
        super().__init__()
        if modality not in {"text", "image"}:
            raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
        self.encoder, self.head, self.modality = encoder, head, modality
        self.config = encoder.config

    def get_input_embeddings(self) -> nn.Module:
        """The wrapped encoder's token embedding table (the token attacks replace rows of its output)."""
        return self.encoder.get_input_embeddings()

    def forward(self, **inputs):
        out = self.encoder(**inputs)
        key = "text_embeds" if self.modality == "text" else "image_embeds"
        return SimpleNamespace(**{key: self.head.lift(getattr(out, key), self.modality)})


@dataclass
class HysacBundle(ClipBundle):
    """A :class:`ClipBundle` whose encoders return hyperboloid points, with HySAC's scalars and safety bounds.

    ``euclidean``: the underlying CLIP encoders (export, LoRA merge); ``bounds``: the safety bounds
    (:mod:`safeclip.hysac.traversal`), None until computed.
    """

    head: HyperbolicHead | None = None
    euclidean: ClipBundle | None = None
    bounds: dict | None = None
    traversal: str | None = None  # evaluate with safety traversal on queries: None, "authors" or "geodesic"
    geometry: str = field(default="lorentz")

    def curvature(self) -> float:
        return float(self.head.curvature().detach())

    def score(self, embeddings: dict, protocols) -> dict[str, dict[str, float]]:
        """``safeclip.eval.evaluation`` protocols on this model's embeddings, by hyperbolic distance and with
        the bundle's ``traversal`` (:func:`safeclip.hysac.evaluate.score_hysac`)."""
        from safeclip.hysac.evaluate import score_hysac

        return score_hysac(embeddings, protocols, curv=self.curvature(), bounds=self.bounds, traversal=self.traversal)


def hysac_bundle(clip: ClipBundle, head: HyperbolicHead, bounds: dict | None = None) -> HysacBundle:
    """Wrap ``clip``'s encoders (plain, LoRA or merged) so that they lift to the hyperboloid through ``head``."""
    return HysacBundle(
        text=HyperbolicEncoder(clip.text, head, "text").eval(), vision=HyperbolicEncoder(clip.vision, head, "image").eval(),
        tokenizer=clip.tokenizer, image_processor=clip.image_processor, name=clip.name,
        logit_scale=math.exp(float(head.logit_scale.detach())), head=head, euclidean=clip, bounds=bounds,
    )


def hysac_metadata(bundle: HysacBundle) -> dict:
    return {"format": FORMAT, **bundle.head.scalars(), "bounds": bundle.bounds,
            "embed_dim": bundle.euclidean.embed_dim, "base_model": bundle.name}


def save_hysac(bundle: HysacBundle, out_dir: str | os.PathLike) -> Path:
    """Export: a merged Hugging Face CLIP folder (safetensors) plus ``hysac.json``; returns ``out_dir``."""
    out = Path(out_dir)
    save_merged_clip(merge_adapters(bundle.euclidean), out)
    write_json_atomic(out / HYSAC_FILE, hysac_metadata(bundle))
    return out


def read_hysac_file(path: Path) -> dict:
    import json

    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); it should be written by safeclip's HySAC export") from err
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def is_hysac(path: str | os.PathLike) -> bool:
    """True for a HySAC export folder or a HySAC run folder."""
    path = Path(path)
    return (path / HYSAC_FILE).is_file() or (path / "best" / HYSAC_FILE).is_file()


def load_hysac(path: str | os.PathLike) -> HysacBundle:
    """Load an export folder (merged CLIP + ``hysac.json``) or a run folder (base + ``best/`` adapters + ``best/hysac.json``)."""
    from safeclip.models.resolve import resolve_model

    path = Path(path)
    if (path / HYSAC_FILE).is_file():
        meta, clip = read_hysac_file(path / HYSAC_FILE), load_clip(path)
    elif (path / "best" / HYSAC_FILE).is_file():
        meta, clip = read_hysac_file(path / "best" / HYSAC_FILE), resolve_model(path)
    else:
        raise MissingFileError(f"{path} is not a HySAC model: no {HYSAC_FILE} (export folder) and no best/{HYSAC_FILE} "
                               "(run folder); write one with `safeclip train` (method hysac) or `safeclip hysac import`")
    return hysac_bundle(clip, HyperbolicHead.from_scalars(meta, clip.embed_dim), meta.get("bounds"))


def with_bounds(bundle: HysacBundle, bounds: dict | None) -> HysacBundle:
    """A shallow copy of ``bundle`` carrying ``bounds``."""
    out = copy.copy(bundle)
    out.bounds = bounds
    return out
