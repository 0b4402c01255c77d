"""Attacks on safe encoders and the one definition of their success (docs/robustness.md).

- :mod:`safeclip.attacks.success`: every attack success rate (retrieval NSFW@1 after the attack; UnlearnDiffAtk's
  pre/post ASR for generators; SneakyPrompt's bypass rate) and what is recorded with it
- :mod:`safeclip.attacks.text`: GCG and PEZ token attacks on a text encoder
- :mod:`safeclip.attacks.image`: L-infinity PGD (with restarts) on images
- :mod:`safeclip.attacks.retrieval`: the attacks scored by the Safe-CLIP retrieval protocol (``safeclip attack``,
  the robustness columns of ``safeclip compare``)
- :mod:`safeclip.attacks.prompt_sets`: readers of the published text-to-image attack prompt sets
- :mod:`safeclip.attacks.generation`: those sets through ``safeclip eval t2i --prompt-set`` and their report
- :mod:`safeclip.attacks.revival`: concept revival by benign fine-tuning
"""
