"""safeclip: remove NSFW concepts from CLIP-style vision-language models and measure it.

Library layout (the CLI in :mod:`safeclip.cli` is the only place that reads argv):

- :mod:`safeclip.models`  load any Hugging Face CLIP checkpoint, LoRA apply / merge / toggle
- :mod:`safeclip.losses`  the Safe-CLIP loss terms (paper Eq. 4-7) as pure tensor functions
- :mod:`safeclip.data`    quadruplet datasets (ViSU JSON, ViSU-Text, JSONL/CSV)
- :mod:`safeclip.train`   the one Safe-CLIP training loop
- :mod:`safeclip.eval`    retrieval protocols and metrics
- :mod:`safeclip.export`  adapters, merged Hugging Face folders
"""

__version__ = "0.1.0"
