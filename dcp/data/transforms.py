"""CLIP image transforms (docs/methods.md, "Training") and robust image decoding."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from dcp.clip.loading import CLIP_MEAN, CLIP_STD, image_transform


def build_transform(train: bool, size: int = 224,
                    crop_scale: Sequence[float] = (0.08, 1.0)) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> float tensor (3, size, size), CLIP-normalised.

    train: RandomResizedCrop(size, scale=crop_scale, bicubic) + horizontal flip (Dassl's);
    test: resize the short side to `size` (bicubic) + centre crop (CLIP's preprocessing).
    Randomness comes from torch's RNG (seeded per data-loader worker by the loader's generator).
    """
    if not train:
        return image_transform(size)
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def load_image(path: str, exif_transpose: bool = False) -> Image.Image:
    """Decode `path` as RGB the way Dassl does (`Image.open(path).convert("RGB")`: grayscale,
    CMYK, palette and alpha images converted, alpha dropped). `exif_transpose`: rotate by the
    EXIF orientation tag first (off by default, as in Dassl and CLIP; `data.exif_transpose`).

    Raises OSError / ValueError (and PIL's errors, which derive from them) on undecodable files.
    """
    with Image.open(path) as im:
        im.load()
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")      # same pixels as convert("RGB"), without PIL's warning
        return im.convert("RGB") if im.mode != "RGB" else im.copy()
