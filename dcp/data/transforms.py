"""CLIP image transforms (spec §5) and robust image decoding."""
from __future__ import annotations

from PIL import Image, ImageOps
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_transform(train: bool, size: int = 224) -> T.Compose:
    """PIL RGB image -> float tensor (3, size, size), CLIP-normalised.

    train: RandomResizedCrop(size, scale=(0.08, 1), bicubic) + horizontal flip (Dassl's);
    test: resize the short side to `size` (bicubic) + centre crop (CLIP's preprocessing).
    Randomness comes from torch's RNG (seeded per data-loader worker by the loader's generator).
    """
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        head = [T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=bicubic),
                T.RandomHorizontalFlip()]
    else:
        head = [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
    return T.Compose(head + [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def load_image(path: str) -> Image.Image:
    """Decode `path` as an upright RGB image (EXIF orientation applied; grayscale, CMYK,
    palette and alpha images converted, alpha dropped as `convert("RGB")` does).

    Raises OSError / ValueError (and PIL's errors, which derive from them) on undecodable files.
    """
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")      # avoids PIL's palette-transparency warning
        return im.convert("RGB") if im.mode != "RGB" else im.copy()
