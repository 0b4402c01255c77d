"""Quadruplet datasets: ViSU JSON, ViSU-Text, quadruplet JSONL/CSV; collation for training."""

from safeclip.data.errors import DataError
from safeclip.data.loader import EpochShuffleSampler, QuadrupletCollator, QuadrupletDataset, load_rgb
from safeclip.data.quadruplets import MODALITIES, Quadruplet, ReadReport, read_quadruplets

__all__ = [
    "MODALITIES",
    "DataError",
    "EpochShuffleSampler",
    "Quadruplet",
    "QuadrupletCollator",
    "QuadrupletDataset",
    "ReadReport",
    "load_rgb",
    "read_quadruplets",
]
