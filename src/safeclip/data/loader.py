"""Turn quadruplet records into training batches: images loaded and preprocessed, texts tokenized.

    dataset = QuadrupletDataset(records, image_processor, modalities=report.modalities)
    loader = DataLoader(dataset, batch_size=32, sampler=EpochShuffleSampler(len(dataset), seed=0),
                        collate_fn=QuadrupletCollator(tokenizer))

A batch is a dict: ``index (B,)``, ``safe_input_ids / safe_attention_mask (B, L)``,
``unsafe_input_ids / unsafe_attention_mask (B, L*)``, ``safe_pixels / unsafe_pixels (B, 3, H, W)``;
keys of modalities the data lacks are absent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from safeclip.data.errors import DataError
from safeclip.data.quadruplets import Quadruplet


def load_rgb(path: Path, *, row: int | None = None) -> Image.Image:
    """Open an image as RGB; a missing or corrupt file raises :class:`DataError` naming it (and the row)."""
    where = f" (row {row})" if row is not None else ""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"image file {path}{where} does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"image file {path}{where} is corrupt or not an image ({err.__class__.__name__}); "
                        "fix it or pass --skip-bad-rows") from err


class QuadrupletDataset(Dataset):
    """Items of a quadruplet list; preprocessed image tensors are optionally kept in memory."""

    def __init__(
        self,
        records: Sequence[Quadruplet],
        image_processor,
        modalities: Sequence[str],
        *,
        cache_images: bool = False,
    ) -> None:
        self.records = list(records)
        self.image_processor = image_processor
        self.modalities = tuple(modalities)
        self.cache_images = cache_images
        self._pixels: dict[Path, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, path: Path, row: int) -> torch.Tensor:
        """Preprocessed ``(3, H, W)`` float tensor of one image."""
        cached = self._pixels.get(path)
        if cached is not None:
            return cached
        image = load_rgb(path, row=row)
        tensor = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        if self.cache_images:
            self._pixels[path] = tensor
        return tensor

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        item: dict = {"index": i}
        for name in self.modalities:
            value = getattr(record, name)
            item[name] = self.pixels(value, record.row) if name.endswith("image") else value
        return item


class QuadrupletCollator:
    """Tokenize texts (padding to the longest in the batch, or to ``max_length``) and stack pixels."""

    def __init__(self, tokenizer, *, padding: str = "longest") -> None:
        self.tokenizer = tokenizer
        self.padding = padding

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.tokenizer.model_max_length, return_tensors="pt"
        )

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {"index": torch.tensor([it["index"] for it in items])}
        sides = [side for side in ("safe", "unsafe") if f"{side}_text" in items[0]]
        if sides:  # one call, so safe and unsafe tokens share a length and can share an encoder pass
            tokens = self.tokenize([it[f"{side}_text"] for side in sides for it in items])
            for k, side in enumerate(sides):
                rows = slice(k * len(items), (k + 1) * len(items))
                batch[f"{side}_input_ids"] = tokens["input_ids"][rows]
                batch[f"{side}_attention_mask"] = tokens["attention_mask"][rows]
        for side in ("safe", "unsafe"):
            if f"{side}_image" in items[0]:
                batch[f"{side}_pixels"] = torch.stack([it[f"{side}_image"] for it in items])
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on ``(seed, epoch)``, so a resumed run sees the same order."""

    def __init__(self, size: int, *, seed: int, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())
