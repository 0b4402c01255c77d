"""Write a Safe-CLIP model in each target's native layout (see :mod:`safeclip.export.targets`)."""

from safeclip.export.targets import EXPORT_TARGETS, export_model

__all__ = ["EXPORT_TARGETS", "export_model"]
