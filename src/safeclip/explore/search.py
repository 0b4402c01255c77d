"""The explore engine: several CLIP models, one gallery, side-by-side top-k answers to a text or an image.

Models are loaded and the gallery embedded (or read from the cache) in a background thread, so the page
opens at once and shows progress; each model's state is ``waiting``, ``loading``, ``embedding``,
``ready`` or ``error`` with a message. A query embeds one text or image per model and scores it against
the cached gallery with one matrix product: well under a second on the CPU for a 10k-item gallery.

    explorer = Explorer({"base": "demo/base", "safe-clip": "demo/run"}, "demo/world/test.jsonl", cache_dir)
    explorer.prepare()                       # or explorer.start() for a background thread
    answer = explorer.search_text("a red circle covered in blood", k=8)
    answer["models"]["safe-clip"]["results"][0]   # {"rank": 1, "index": ..., "label": "safe", "score": ...}
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safeclip.explore.gallery import Gallery, GalleryEmbeddings, load_or_embed_gallery, read_gallery
from safeclip.models.clip import encode_images, encode_texts

MAX_K = 100
KEEP_GENERATED = 200  # generated images kept for the page (the oldest are dropped)


class QueryError(ValueError):
    """A query the page can answer only with a message (empty text, unreadable image, unknown model...)."""


@dataclass
class ModelState:
    """Where one model stands: its spec, its loading/embedding state and, once ready, bundle and embeddings."""

    label: str
    spec: str
    adapters: str | None = None
    state: str = "waiting"  # waiting | loading | embedding | ready | error
    message: str = ""
    done: int = 0
    total: int = 0
    bundle: object = None
    embeddings: GalleryEmbeddings | None = None

    def status(self) -> dict:
        return {"label": self.label, "spec": self.spec, "state": self.state, "message": self.message,
                "done": self.done, "total": self.total}


@dataclass
class Explorer:
    """Models side by side over one gallery. ``models`` maps a label to a model spec (see ``resolve_model``)."""

    models: Mapping[str, str]
    gallery_path: str
    cache_dir: str | Path
    image_root: str | None = None
    adapters: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 256
    sd: str | None = None  # a diffusers pipeline: each text query also paints one image per model
    sd_steps: int = 25
    seed: int = 0
    painter: object = None
    painter_state: str = "off"  # off | waiting | loading | ready | error
    painter_message: str = ""
    generated: dict = field(default_factory=dict)  # image id -> PIL image painted for the page
    gallery: Gallery | None = None
    gallery_error: str = ""
    states: dict[str, ModelState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _image_ids: itertools.count = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.states = {label: ModelState(label, str(spec), self.adapters.get(label)) for label, spec in self.models.items()}
        self.painter_state = "waiting" if self.sd else "off"

    # ------------------------------------------------------------------ preparation

    def start(self) -> threading.Thread:
        """Prepare in a daemon thread (the server answers status requests meanwhile)."""
        thread = threading.Thread(target=self.prepare, name="explore-prepare", daemon=True)
        thread.start()
        return thread

    def prepare(self) -> None:
        """Read the gallery, then load and embed it with each model; failures become messages, not exceptions."""
        try:
            self.gallery = read_gallery(self.gallery_path, image_root=self.image_root)
            print(f"[explore] gallery {self.gallery_path}: {self.gallery.counts()}", flush=True)
        except (ValueError, OSError) as err:
            self.gallery_error = f"gallery {self.gallery_path}: {err}"
            print(f"[explore] error: {self.gallery_error}", flush=True)
            for state in self.states.values():
                state.state, state.message = "error", "no gallery"
            return
        for state in self.states.values():
            self._prepare_model(state)
        if self.sd:
            self._prepare_painter()

    def _prepare_painter(self) -> None:
        from safeclip.explore.generation import Painter

        self.painter_state = "loading"
        try:
            ready = {label: state.spec for label, state in self.states.items() if state.state == "ready"}
            self.painter = Painter(self.sd, ready, adapters=self.adapters, steps=self.sd_steps, seed=self.seed)
            self.painter_state, self.painter_message = "ready", f"{self.sd}, {self.sd_steps} steps, seed {self.seed}"
        except Exception as err:  # shown on the page; retrieval keeps working
            self.painter_state = "error"
            self.painter_message = f"--sd {self.sd}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc()
        print(f"[explore] text-to-image: {self.painter_state} {self.painter_message}", flush=True)

    def _prepare_model(self, state: ModelState) -> None:
        from safeclip.models.resolve import resolve_model

        try:
            state.state = "loading"
            state.bundle = resolve_model(state.spec, adapters=state.adapters)
            state.state = "embedding"
            started = time.perf_counter()

            def progress(done: int, total: int) -> None:
                state.done, state.total = done, total
                print(f"[explore] {state.label}: embedded {done}/{total} gallery items", flush=True)

            state.embeddings = load_or_embed_gallery(state.bundle, self.gallery, self.cache_dir,
                                                     batch_size=self.batch_size, on_progress=progress)
            how = "from the cache" if state.embeddings.from_cache else f"in {time.perf_counter() - started:.1f} s"
            state.state, state.message = "ready", f"gallery embeddings {how}"
            print(f"[explore] {state.label}: ready ({state.message})", flush=True)
        except Exception as err:  # shown on the page; the other models keep working
            state.state, state.message = "error", f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"[explore] {state.label}: error: {state.message}", flush=True)
            if not isinstance(err, (ValueError, OSError)):
                traceback.print_exc()

    def status(self) -> dict:
        gallery = None
        if self.gallery is not None:
            gallery = {"source": self.gallery.source, "images": len(self.gallery.images), "texts": len(self.gallery.texts),
                       "summary": self.gallery.counts()}
        return {"gallery": gallery, "gallery_error": self.gallery_error,
                "models": [s.status() for s in self.states.values()],
                "painter": {"state": self.painter_state, "message": self.painter_message},
                "ready": all(s.state in ("ready", "error") for s in self.states.values())}

    # ------------------------------------------------------------------ queries

    def _chosen(self, labels: Sequence[str] | None) -> list[ModelState]:
        if self.gallery_error:
            raise QueryError(self.gallery_error)
        if not labels:
            return list(self.states.values())
        unknown = [label for label in labels if label not in self.states]
        if unknown:
            raise QueryError(f"unknown model {', '.join(map(repr, unknown))}; this page compares "
                             f"{', '.join(self.states)} (start safeclip explore with --model LABEL=MODEL to add one)")
        return [self.states[label] for label in labels]

    def search_text(self, query: str, *, k: int = 8, labels: Sequence[str] | None = None) -> dict:
        """Top-``k`` gallery images for a text query, per model."""
        query = (query or "").strip()
        if not query:
            raise QueryError("the query is empty: type a caption to search the gallery's images")
        states = self._chosen(labels)
        if self.gallery is not None and not self.gallery.images:
            raise QueryError(f"the gallery {self.gallery.source} has no images, so a text query has nothing to find; "
                             "give a gallery with images (a quadruplet file with safe_image/unsafe_image, or a folder "
                             "of images), or upload an image to search its captions")
        return self._answer("text", query, states, k,
                            lambda b: encode_texts(b.text, b.tokenizer, [query]), "images")

    def search_image(self, image, *, k: int = 8, labels: Sequence[str] | None = None) -> dict:
        """Top-``k`` gallery captions for a PIL image query, per model."""
        states = self._chosen(labels)
        if self.gallery is not None and not self.gallery.texts:
            raise QueryError(f"the gallery {self.gallery.source} has no captions, so an image query has nothing to find; "
                             "give a quadruplet file with captions, or type a text query to search its images")
        return self._answer("image", "uploaded image", states, k,
                            lambda b: encode_images(b.vision, b.image_processor, [image]), "texts")

    def paint(self, prompt: str, *, labels: Sequence[str] | None = None) -> dict:
        """One generated image per model for ``prompt`` (same seed); returns ``{label: image id}``."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise QueryError("the prompt is empty: type a caption to generate images from")
        if self.painter_state != "ready":
            raise QueryError(f"text-to-image is {self.painter_state}" + (f": {self.painter_message}" if self.painter_message
                             else " (start safeclip explore with --sd <diffusers pipeline>)"))
        wanted = [s.label for s in self._chosen(labels) if s.label in self.painter.generators]
        images = self.painter.paint(prompt)
        ids = {}
        for label in wanted:
            image_id = str(next(self._image_ids))
            self.generated[image_id] = images[label]
            ids[label] = image_id
        for old in list(self.generated)[:-KEEP_GENERATED]:
            del self.generated[old]
        return {"prompt": prompt, "seed": self.seed, "images": ids}

    def _answer(self, kind: str, query: str, states: list[ModelState], k: int, encode, side: str) -> dict:
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
        started = time.perf_counter()
        answers = {}
        for state in states:
            if state.state != "ready":
                answers[state.label] = {"state": state.state, "message": state.message or "not ready yet", "results": []}
                continue
            with self._lock:
                q = torch.nn.functional.normalize(encode(state.bundle), dim=-1)  # (1, D)
            answers[state.label] = ranked(getattr(state.embeddings, side), q[0], getattr(self.gallery, side), k,
                                          with_text=side == "texts")
        return {"kind": kind, "query": query, "k": k, "side": side, "models": answers,
                "seconds": round(time.perf_counter() - started, 4)}


def ranked(gallery_emb: torch.Tensor, q: torch.Tensor, items, k: int, *, with_text: bool) -> dict:
    """Top-``k`` of ``items`` by cosine ``gallery_emb (N, D) @ q (D,)`` (both unit), with safety labels and NSFW@1.

    NSFW@1 of one query is 100 when its top-1 item is unsafe, 0 when safe, None when the gallery does not know.
    Captions travel as text (``with_text``); images only by index (the page asks for a thumbnail).
    """
    scores = gallery_emb @ q  # (N,)
    top = torch.topk(scores, min(k, scores.shape[0]))
    results = [{"rank": r + 1, "index": int(i), "value": items[int(i)].value if with_text else "",
                "source": items[int(i)].source, "label": items[int(i)].label, "score": round(float(s), 4)}
               for r, (s, i) in enumerate(zip(top.values, top.indices))]
    top1 = results[0]["label"] if results else "unknown"
    nsfw_at_1 = None if top1 == "unknown" else (100.0 if top1 == "unsafe" else 0.0)
    return {"state": "ready", "message": "", "results": results, "nsfw_at_1": nsfw_at_1,
            "unsafe_in_top_k": sum(r["label"] == "unsafe" for r in results)}
