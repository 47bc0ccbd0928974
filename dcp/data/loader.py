"""Image dataset and loaders: items `(image (3, S, S) float, label int, index int)`.

`index` is the position in the list given to the loader, so the engine can map a prediction
back to its `Datum`. A file that cannot be decoded raises a `DatasetError` naming it
(`on_bad_image="fail"`, default) or, with `on_bad_image="skip"`, is logged and dropped from its
batch; the loader logs how many were skipped at the end of each pass (`loader.skipped`).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data.dataloader import default_collate

from .splits import DatasetError, Datum
from .transforms import load_image

log = logging.getLogger(__name__)

BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageDataset(Dataset):
    """Decode and transform `data[i]`; returns (image, label, i), or None for a skipped bad file."""

    def __init__(self, data: Sequence[Datum], transform: Callable, on_bad_image: str = "fail"):
        if on_bad_image not in ("fail", "skip"):
            raise DatasetError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        self.data = list(data)
        self.transform = transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        d = self.data[i]
        try:
            image = load_image(d.path)
        except BAD_IMAGE_ERRORS as e:
            if self.on_bad_image == "fail":
                raise DatasetError(f"cannot decode image {d.path}: {e}") from e
            log.warning("skipping image that cannot be decoded: %s (%s)", d.path, e)
            return None
        return self.transform(image), d.label, i


def collate_skip(batch: list):
    """`default_collate` of the items that are not None; None when none is left."""
    items = [b for b in batch if b is not None]
    return default_collate(items) if items else None


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r of W gets indices r, r+W, r+2W, ...: every index exactly once
    across ranks, no padding duplicates (rank lengths differ by at most one)."""

    def __init__(self, n: int, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.n, self.num_replicas, self.rank = n, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


class ImageLoader(DataLoader):
    """A DataLoader that drops the None batches of `on_bad_image="skip"` and counts skipped files."""
    skipped = 0

    def __iter__(self):
        seen = 0
        for batch in super().__iter__():
            if batch is None:
                continue
            seen += len(batch[2])
            yield batch
        expected = len(self) * self.batch_size if self.drop_last else len(self.sampler)
        self.skipped = expected - seen
        if self.skipped:
            log.warning("skipped %d image(s) that could not be decoded in this pass (named in "
                        "the warnings above)", self.skipped)


def build_loader(data: Union[Sequence[Datum], ImageDataset], transform: Callable, batch_size: int,
                 shuffle: bool, seed: int, num_workers: int, distributed: bool = False, *,
                 drop_last: bool = False, on_bad_image: str = "fail",
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> DataLoader:
    """A DataLoader of `(images (B,3,S,S), labels (B,), indices (B,))`.

    Shuffling uses a generator seeded with `seed` (which also seeds the workers' RNGs);
    workers persist across epochs when `num_workers > 0`; memory is pinned when CUDA is
    available. `distributed=True` (rank / world size from `torch.distributed` unless given):
    with `shuffle` a `DistributedSampler(seed=seed)` (call `loader.sampler.set_epoch(e)` each
    epoch; it pads to equal rank lengths), without it a `ShardSampler` that yields every
    image exactly once across ranks (use it for evaluation).
    """
    dataset = data if isinstance(data, ImageDataset) else ImageDataset(data, transform, on_bad_image)
    if len(dataset) == 0:
        raise DatasetError("build_loader: no images to load (an empty split, e.g. the train/val "
                           "split of an evaluation-only dataset)")
    sampler: Optional[Sampler] = None
    if distributed:
        if world_size is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise DatasetError("build_loader(distributed=True) needs an initialised process "
                                   "group or explicit rank and world_size")
            world_size = torch.distributed.get_world_size()
            rank = torch.distributed.get_rank()
        if shuffle:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=seed, drop_last=drop_last)
        else:
            sampler = ShardSampler(len(dataset), world_size, rank)
    return ImageLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, collate_fn=collate_skip if dataset.on_bad_image == "skip" else None,
        pin_memory=torch.cuda.is_available(), drop_last=drop_last,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
