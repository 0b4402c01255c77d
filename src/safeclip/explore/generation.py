"""Text-to-image beside retrieval (the paper's Fig. 4): one Stable Diffusion image per model's text encoder.

The pipeline given with ``--sd`` keeps its UNet, VAE, tokenizer and scheduler; each explored model lends it
its text encoder (the condition ``{label}+plain`` of :func:`safeclip.eval.t2i.build_generators`), and every
image of one prompt starts from the same seed, so the pictures differ only by the text encoder.

    painter = Painter("CompVis/stable-diffusion-v1-4", {"base": "openai/clip-vit-large-patch14",
                                                          "safe-clip": "runs/vit-l-14"}, steps=25, seed=0)
    images = painter.paint("a prompt")   # {"base": PIL.Image, "safe-clip": PIL.Image}
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from safeclip.eval.t2i import T2IConfig, build_generators, load_stable_diffusion, load_text_encoder

PIPELINE_LABEL = "sd-own-encoder"  # the pipeline's own text encoder (built by build_generators, not shown)


class Painter:
    """Generates one image per model for a prompt; loads the pipeline and the text encoders once."""

    def __init__(self, sd: str, models: Mapping[str, str], *, adapters: Mapping[str, str] | None = None,
                 steps: int = 25, seed: int = 0, guidance_scale: float = 7.5, device: str | None = None) -> None:
        self.seed = seed
        self.pipe = load_stable_diffusion(sd, device=device)
        adapters = adapters or {}
        encoders = {label: load_text_encoder(spec, adapters=adapters.get(label)) for label, spec in models.items()}
        cfg = T2IConfig(images_per_prompt=1, seed=seed, steps=steps, guidance_scale=guidance_scale, variants=("plain",))
        generators = build_generators(self.pipe, encoders, cfg, base_label=PIPELINE_LABEL)
        self.generators = {label: generators[f"{label}+plain"] for label in models}
        self._lock = threading.Lock()

    def paint(self, prompt: str) -> dict:
        """``{label: PIL image}`` for ``prompt``, every model from the same seed."""
        with self._lock:
            return {label: generate([prompt], [self.seed])[0] for label, generate in self.generators.items()}
