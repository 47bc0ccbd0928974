"""CLIP image transforms (docs/methods.md, "Training") and image decoding as Dassl does it."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from dcp.clip.loading import CLIP_MEAN, CLIP_STD, image_transform


def build_transform(train: bool, size: int = 224,
                    crop_scale: Sequence[float] = (0.08, 1.0)) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> CLIP-normalised float tensor (3, size, size). Train: Dassl's random
    resized crop (bicubic) and flip, drawn from torch's RNG; test: CLIP's resize and centre crop."""
    if not train:
        return image_transform(size)
    bicubic = T.InterpolationMode.BICUBIC
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=bicubic),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def load_image(path: str, exif_transpose: bool = False) -> Image.Image:
    """`path` decoded as RGB like Dassl's `Image.open(path).convert("RGB")`, first rotated by its
    EXIF orientation with `exif_transpose`. Raises OSError / ValueError on undecodable files."""
    with Image.open(path) as im:
        im.load()
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")      # same pixels as convert("RGB"), without PIL's warning
        return im.convert("RGB") if im.mode != "RGB" else im.copy()
