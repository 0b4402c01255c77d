"""The offline miniature ViSU world: procedural scenes, their unsafe counterparts, a small CLIP.

    from safeclip.world import build_world, pretrain_base
    world = build_world("demo/world", seed=0)
    base = pretrain_base(world, "demo/base", seed=0)       # a Hugging Face CLIP folder
"""

from safeclip.world.build import build_world
from safeclip.world.categories import CATEGORIES, MARKERS, PHRASES, UNSAFE_WORDS
from safeclip.world.pretrain import pretrain_base

__all__ = ["CATEGORIES", "MARKERS", "PHRASES", "UNSAFE_WORDS", "build_world", "pretrain_base"]
