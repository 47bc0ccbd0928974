"""The one data-loading path, for training and evaluation: batches of `(images (B, 3, S, S),
labels (B,), indices into the list (B,))`, decoded in `num_workers` worker processes.

An epoch's shuffle depends only on its seed and an image's crop and flip on (epoch seed,
index), so a resumed epoch replays exactly whatever the number of workers or processes.
Undecodable files are reported by the main process (`batches`: fail or skip).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterator, List, NamedTuple, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..utils import Progress, mix_seed
from .splits import DatasetError, Datum
from .transforms import load_image

log = logging.getLogger(__name__)

BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadImage(NamedTuple):
    index: int
    path: str
    reason: str


class ImageDataset(Dataset):
    """`data[i]` decoded and transformed: (image, label, i), or a `BadImage` record."""

    def __init__(self, data: Sequence[Datum], transform: Callable, exif_transpose: bool = False):
        self.data, self.transform, self.exif_transpose = list(data), transform, exif_transpose

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        d = self.data[i]
        try:
            image = load_image(d.path, exif_transpose=self.exif_transpose)
        except BAD_IMAGE_ERRORS as e:
            return BadImage(i, d.path, f"{type(e).__name__}: {str(e)[:200]}")
        return self.transform(image), d.label, i


class SeededImages(Dataset):
    """`base[i]` for a key `(seed, i)` from `TrainBatches`, the augmentation RNG seeded by (seed, i):
    the same crop and flip whichever worker or process loads it."""

    def __init__(self, base: ImageDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]):
        seed, i = key
        with torch.random.fork_rng(devices=[]):      # the caller's CPU RNG is left untouched
            torch.default_generator.manual_seed(mix_seed(seed, i))
            return self.base[i]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training steps of an epoch over `n` images: full global batches, at least one (Dassl)."""
    return max(n // batch_size, 1)


class TrainBatches(Sampler[List[Tuple[int, int]]]):
    """Process `rank`'s slice of the global batches of one epoch: `batch_size` consecutive entries
    of a permutation drawn from `seed` (the last incomplete batch dropped when there is a full
    one, as Dassl), process r of W taking entries [r*b, (r+1)*b), b = batch_size / W. Entries are
    keys `(seed, index)` for `SeededImages`; `set_epoch(seed)` before each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world or (world > 1 and n < batch_size):
            raise ValueError(f"{n} images in global batches of {batch_size} cannot be split "
                             f"over {world} processes")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size)

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        b = self.batch_size // self.world
        for k in range(len(self)):
            batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
            batch = batch[self.rank * b:(self.rank + 1) * b] if self.world > 1 else batch
            yield [(self.seed, i) for i in batch]


class EvalBatches(Sampler[List[int]]):
    """Consecutive batches in list order; process r evaluates batches r, r+W, r+2W, ... (each
    image once, in the batch one process would put it in: DCP `released` depends on it)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def _batches(self) -> range:
        return range(self.rank, math.ceil(self.n / self.batch_size), self.world)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[List[int]]:
        for k in self._batches():
            yield list(range(k * self.batch_size, min((k + 1) * self.batch_size, self.n)))


def collate(items: list):
    """(images, labels, indices, [BadImage...]) of a batch; images etc. None if none decoded."""
    good = [x for x in items if not isinstance(x, BadImage)]
    bad = [x for x in items if isinstance(x, BadImage)]
    return (*(default_collate(good) if good else (None, None, None)), bad)


def _loader(dataset: Dataset, batches: Sampler, num_workers: int, seed: int,
            persistent: bool) -> DataLoader:
    """Pinned memory on CUDA; the workers' base seed from `seed`, not from the global RNG."""
    if not len(dataset):
        raise DatasetError("no images to load (an empty split or few-shot draw)")
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(),
                      persistent_workers=persistent and num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def train_loader(data: Sequence[Datum], transform: Callable, batch_size: int, seed: int,
                 num_workers: int = 0, rank: int = 0, world: int = 1,
                 exif_transpose: bool = False) -> DataLoader:
    """Shuffled, augmented batches; its workers live across epochs (`set_epoch` on its
    `batch_sampler` before each)."""
    images = SeededImages(ImageDataset(data, transform, exif_transpose))
    return _loader(images, TrainBatches(len(data), batch_size, seed, rank, world), num_workers,
                   seed, persistent=True)


def eval_loader(data: Sequence[Datum], transform: Callable, batch_size: int,
                num_workers: int = 0, rank: int = 0, world: int = 1,
                exif_transpose: bool = False) -> DataLoader:
    """Batches in list order (each image once over the processes)."""
    return _loader(ImageDataset(data, transform, exif_transpose),
                   EvalBatches(len(data), batch_size, rank, world), num_workers, 0, persistent=False)


def batches(loader: DataLoader, on_bad_image: str = "fail") -> Iterator[tuple]:
    """The loader's (images, labels, indices), undecodable files failing or skipped."""
    for images, labels, idx, bad in loader:
        for b in bad:
            if on_bad_image == "fail":
                raise DatasetError(f"cannot decode image {b.path} ({b.reason}); "
                                   "data.on_bad_image=skip skips such files")
            log.warning("skipping image that cannot be decoded: %s (%s)", b.path, b.reason)
        if images is not None:
            yield images, labels, idx


def check_images(data: Sequence[Datum], on_bad_image: str, desc: str) -> List[Datum]:
    """`data` after reading every image's header (not its pixels): a file that is not an image
    fails here, naming it, or is dropped with `on_bad_image="skip"`."""
    keep, bad = [], []
    for d in Progress(data, desc=f"checking {desc}", unit="img", log_every=30):
        try:
            with Image.open(d.path) as im:
                im.size
            keep.append(d)
        except BAD_IMAGE_ERRORS as e:
            if on_bad_image == "fail":
                raise DatasetError(f"{desc}: {d.path} is not a readable image ({type(e).__name__}: "
                                   f"{str(e)[:200]}); data.on_bad_image=skip skips such files") from None
            bad.append(d)
    if bad:
        log.warning("%s: skipping %d file(s) that are not readable images, e.g. %s", desc,
                    len(bad), bad[0].path)
    return keep
