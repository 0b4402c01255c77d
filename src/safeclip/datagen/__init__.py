"""Building ViSU-style data (paper Sec. 3.1): an NSFW text generator (SFT, then DPO on automatically
ranked pairs), unsafe captions balanced over the 20 categories, unsafe images, and the quality report.

Run ``safeclip datagen --help``; the offline proof is ``safeclip datagen demo --out runs/datagen``.
See docs/datagen.md.
"""
