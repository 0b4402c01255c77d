"""The one evaluation path: embed test quadruplets with each model, then score the embeddings by protocol.

    from safeclip.eval import evaluate
    results = evaluate({"base": base, "safe-clip": safe}, records, protocols=("safe-clip", "safer-t2v"))
    results.models["base"]["T*->V+V*"]["NSFW@1"]    # percent
    results.write("out/")                           # out/results.json + out/results.md

Every caller (``safeclip train``'s validation, ``safeclip demo``, ``safeclip compare``, ``safeclip eval
retrieval`` / ``safer-t2v``) goes through :func:`evaluate`. It runs two separate steps, so that each can
move on its own (to a GPU, or sharded over processes):

1. :func:`embed_records`: the ``(N, D)`` embeddings of the modalities the protocols read (``eval/embed.py``),
   computed on ``device`` (default: where the model already is) and returned as float32 on the CPU;
2. :func:`score`: every protocol over those embeddings (on ``device`` when given, else on the CPU).

Protocols (:data:`PROTOCOLS`; each adds its metric groups to a model's metrics):

- ``"safe-clip"``: the Safe-CLIP / HySAC retrieval protocol, groups ``"T->V"``, ``"V->T"``,
  ``"T*->V+V*"``, ``"V*->T+T*"`` (``eval/retrieval.py``; the unsafe directions need both unsafe sides)
- ``"safer-t2v"``: SafeR-CLIP's T*->V, group ``"safer_t2v"`` (``eval/safer_protocol.py``)
- ``"safeground"``: UWM's SafeGround, group ``"safeground"`` (``eval/safeground.py``)

Zero-shot accuracy (group ``"zero_shot"``) is not computed from the quadruplets: pass ``zero_shot_world``
(the offline world's attributes) or ``zero_shot_folder`` (``folder/<class>/<image>``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.data.quadruplets import MODALITIES, Quadruplet
from safeclip.errors import ConfigError, DataError
from safeclip.eval.allowed_access import PROTOCOL as ALLOWED_CAPTION
from safeclip.eval.allowed_access import allowed_access_group
from safeclip.eval.embed import embed_quadruplets
from safeclip.eval.report import metric_table
from safeclip.eval.retrieval import PROTOCOL_CAPTIONS, format_markdown_table, safe_clip_protocol
from safeclip.eval.safeground import PROTOCOL as SAFEGROUND_CAPTION
from safeclip.eval.safeground import safeground
from safeclip.eval.safer_protocol import PROTOCOL as SAFER_CAPTION
from safeclip.eval.safer_protocol import safer_t2v
from safeclip.eval.zero_shot import PROTOCOL as ZERO_SHOT_CAPTION
from safeclip.models.clip import ClipBundle

Embeddings = dict[str, torch.Tensor]  # modality name (safe_text, unsafe_text, safe_image, unsafe_image) -> (N, D)


@dataclass(frozen=True)
class Protocol:
    """A metric over the embeddings of aligned quadruplets."""

    groups: str  # the metric groups it writes, as one label (the key of its caption in compare.json)
    caption: str
    needs: tuple[str, ...]  # modalities it cannot run without
    reads: tuple[str, ...]  # modalities it uses when the records have them (a superset of needs)
    compute: Callable[[Embeddings], dict[str, dict[str, float]]]


def _safe_clip(emb: Embeddings) -> dict:
    return safe_clip_protocol(emb["safe_text"], emb["safe_image"], emb.get("unsafe_text"), emb.get("unsafe_image"))


def _safer_t2v(emb: Embeddings) -> dict:
    return {"safer_t2v": safer_t2v(emb["unsafe_text"], emb["safe_image"])}


def _safeground(emb: Embeddings) -> dict:
    return {"safeground": safeground(emb["safe_text"], emb["unsafe_text"], emb["safe_image"], emb["unsafe_image"])}


def _allowed_access(emb: Embeddings) -> dict:
    return {"allowed": allowed_access_group(emb["safe_text"], emb["safe_image"], emb["unsafe_text"], emb["unsafe_image"])}


PROTOCOLS: dict[str, Protocol] = {
    "safe-clip": Protocol("T->V / V->T / T*->V+V* / V*->T+T*", PROTOCOL_CAPTIONS["safe-clip"],
                          ("safe_text", "safe_image"), MODALITIES, _safe_clip),
    "safer-t2v": Protocol("safer_t2v", SAFER_CAPTION, ("unsafe_text", "safe_image"), ("unsafe_text", "safe_image"),
                          _safer_t2v),
    "safeground": Protocol("safeground", SAFEGROUND_CAPTION, MODALITIES, MODALITIES, _safeground),
    "allowed-access": Protocol("allowed", ALLOWED_CAPTION, MODALITIES, MODALITIES, _allowed_access),
}
ZERO_SHOT_GROUP = "zero_shot"


def protocol(name: str) -> Protocol:
    """The protocol registered as ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def missing_modalities(protocols: Sequence[str], present: Sequence[str]) -> dict[str, list[str]]:
    """``{protocol: [modalities it needs that are not in present]}`` for the protocols that cannot run."""
    missing = {name: [m for m in protocol(name).needs if m not in present] for name in protocols}
    return {name: lacking for name, lacking in missing.items() if lacking}


def require_modalities(protocols: Sequence[str], present: Sequence[str], source: str) -> None:
    """Raise ValueError naming ``source`` and what it lacks when one of ``protocols`` cannot run on it."""
    for name, lacking in missing_modalities(protocols, present).items():
        raise DataError(f"{source} has no {' and no '.join(lacking)}; the {name} protocol needs "
                         f"{' and '.join(protocol(name).needs)} ({protocol(name).caption})")


def present_modalities(records: Sequence[Quadruplet]) -> tuple[str, ...]:
    """The modalities every record has."""
    return tuple(m for m in MODALITIES if records and all(getattr(r, m) is not None for r in records))


def embed_records(bundle: ClipBundle, records: Sequence[Quadruplet], *, protocols: Sequence[str] = ("safe-clip",),
          device: str | torch.device | None = None, batch_size: int = 512, progress: bool = False,
          num_workers: int = 0, shard: bool = False) -> Embeddings:
    """Step 1: the ``(N, D)`` embeddings (float32, CPU) of the record modalities ``protocols`` read.

    ``device``: where the encoders run; ``None`` keeps them where they are, anything else moves them there
    (``nn.Module.to``, in place). Batches of ``batch_size`` records, decoded by ``num_workers`` loader
    processes. ``shard``: under ``torchrun`` / ``accelerate launch`` each process embeds its share of the
    batches and every process gets all rows (every process must call it; see ``eval/embed.py``).
    """
    present = present_modalities(records)
    wanted = tuple(m for m in MODALITIES if m in present and any(m in protocol(p).reads for p in protocols))
    if not wanted:
        return {}
    if device is not None:
        bundle.text.to(device)
        bundle.vision.to(device)
    return embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records,
                             modalities=wanted, batch_size=batch_size, progress=progress, num_workers=num_workers,
                             shard=shard)


def score(embeddings: Embeddings, protocols: Sequence[str] = ("safe-clip",), *,
          device: str | torch.device | None = None) -> dict[str, dict[str, float]]:
    """Step 2: every protocol's metric groups from ``embeddings``, in protocol order (on ``device`` if given)."""
    require_modalities(protocols, tuple(embeddings), "the embeddings")
    if device is not None:
        embeddings = {name: value.to(device) for name, value in embeddings.items()}
    metrics: dict[str, dict[str, float]] = {}
    for name in protocols:
        metrics.update(protocol(name).compute(embeddings))
    return metrics


def zero_shot(bundle: ClipBundle, *, world: str | os.PathLike | None = None,
              folder: str | os.PathLike | None = None) -> dict[str, float] | None:
    """The ``"zero_shot"`` group: world attribute accuracy (shape, colour, their mean as ``"accuracy"``)
    or the accuracy on a labelled folder; None when neither is given."""
    from safeclip.eval.zero_shot import folder_zero_shot, world_zero_shot

    if world:
        accuracies = world_zero_shot(bundle, world)
        return {"accuracy": accuracies.pop("mean"), **accuracies}
    if folder:
        return {"accuracy": folder_zero_shot(bundle, folder)}
    return None


MIN_RELIABLE_ROWS = 100  # below this a command that writes results warns that they say little


@dataclass
class EvalResults:
    """Metrics of models under named protocols: what :func:`evaluate` returns and every caller writes.

    ``models``: ``{label: {group: {metric: value}}}`` (percent). ``embeddings``: ``{label: Embeddings}``,
    kept only when :func:`evaluate` is asked to (pictures of retrieval examples need them).
    """

    protocols: tuple[str, ...] = ("safe-clip",)
    models: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    embeddings: dict[str, Embeddings] = field(default_factory=dict, repr=False)
    rows: int = 0  # N: the test rows behind the numbers, the smallest after update() (recalls move in steps of 100 / N)

    def update(self, other: EvalResults) -> EvalResults:
        """Add ``other``'s models (and kept embeddings) to these results; returns self."""
        self.models.update(other.models)
        self.embeddings.update(other.embeddings)
        self.rows = min((n for n in (self.rows, other.rows) if n), default=0)  # the smallest N behind any row
        return self

    def captions(self) -> dict[str, str]:
        """``{metric groups: protocol caption}`` of every protocol, and of zero-shot when measured."""
        captions = {protocol(p).groups: protocol(p).caption for p in self.protocols}
        if any(ZERO_SHOT_GROUP in m for m in self.models.values()):
            captions[ZERO_SHOT_GROUP] = ZERO_SHOT_CAPTION
        return captions

    def to_json(self) -> dict:
        """``{"protocol": name, "models": ...}`` for one protocol, ``{"protocols": captions, "models": ...}`` else."""
        if len(self.protocols) == 1 and not any(ZERO_SHOT_GROUP in m for m in self.models.values()):
            return {"protocol": self.protocols[0], "rows": self.rows, "models": self.models}
        return {"protocols": self.captions(), "rows": self.rows, "models": self.models}

    def table(self) -> str:
        """Markdown: one row per model, one column per (group, metric) in order of first appearance."""
        if self.protocols == ("safe-clip",):
            return format_markdown_table(self.models, "safe-clip")
        columns: list[tuple[str, str]] = []
        for metrics in self.models.values():
            columns += [(g, m) for g, entry in metrics.items() for m in entry if (g, m) not in columns]
        legend = "".join(f"- `{groups}`: {caption}\n" for groups, caption in self.captions().items())
        return f"Percent. Protocols:\n{legend}\n" + metric_table(self.models, columns)

    def write(self, out_dir: str | os.PathLike, stem: str = "results") -> tuple[Path, Path]:
        """``out_dir/{stem}.json`` (:meth:`to_json`, indent 2) and ``out_dir/{stem}.md`` (:meth:`table`), atomically."""
        out = Path(out_dir)
        return (write_json_atomic(out / f"{stem}.json", self.to_json()),
                write_text_atomic(out / f"{stem}.md", self.table()))


def evaluate(models: Mapping[str, ClipBundle] | ClipBundle, records: Sequence[Quadruplet], *,
             protocols: Sequence[str] = ("safe-clip",), device: str | torch.device | None = None,
             batch_size: int = 512, progress: bool = False, skip_missing: bool = False,
             num_workers: int = 0, shard: bool = False,
             zero_shot_world: str | os.PathLike | None = None, zero_shot_folder: str | os.PathLike | None = None,
             keep_embeddings: bool = False) -> EvalResults:
    """Every protocol for each model on the same ``records``: :func:`embed_records`, then :func:`score`.

    ``models``: ``{label: ClipBundle}``, or one bundle (labelled ``"model"``). A protocol the records cannot
    feed (missing modalities) raises ValueError naming what is missing, or is left out with
    ``skip_missing=True``. ``device``: see :func:`embed_records` and :func:`score` (None: the models' own device
    for embedding, the CPU for scoring). ``num_workers`` and ``shard``: see :func:`embed_records`; sharded,
    every process gets the metrics one process computes.
    """
    models = {"model": models} if isinstance(models, ClipBundle) else dict(models)
    for name in protocols:
        protocol(name)  # unknown names fail before any work
    if skip_missing:
        lacking = missing_modalities(protocols, present_modalities(records))
        protocols = [p for p in protocols if p not in lacking]
    else:
        require_modalities(protocols, present_modalities(records), f"the {len(records)} records")
    results = EvalResults(tuple(protocols), rows=len(records))
    for label, bundle in models.items():
        emb = embed_records(bundle, records, protocols=protocols, device=device, batch_size=batch_size, progress=progress,
                            num_workers=num_workers, shard=shard)
        # a model with its own geometry (HySAC: hyperbolic distance, safety traversal) scores its embeddings itself
        metrics = bundle.score(emb, protocols) if hasattr(bundle, "score") else score(emb, protocols, device=device)
        accuracy = zero_shot(bundle, world=zero_shot_world, folder=zero_shot_folder)
        if accuracy is not None:
            metrics[ZERO_SHOT_GROUP] = accuracy
        results.models[label] = metrics
        if keep_embeddings:
            results.embeddings[label] = emb
    return results
