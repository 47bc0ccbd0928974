"""Miniature dataset trees in the exact on-disk layouts users have (CoOp's DATASETS.md).

Images are tiny generated JPEGs (one encoded blob written to every path keeps this fast).
Each builder returns what the reader must find, so tests compare against it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Tuple

from PIL import Image

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size=(16, 12), color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, fmt)
    return buf.getvalue()


JPEG = image_bytes()


def touch_images(paths, data: bytes = JPEG) -> None:
    made = set()
    for p in paths:
        p = Path(p)
        if p.parent not in made:
            p.parent.mkdir(parents=True, exist_ok=True)
            made.add(p.parent)
        with open(p, "wb") as f:
            f.write(data)


# split-file datasets: name -> (folder, image sub-folder, split name, classes, path pattern)
# A class is (split-file class name, folder/prefix used in paths); `path(c, i, split)`.
SPLIT_SPECS = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "Caltech101",
                   [("face", "Faces"), ("leopard", "Leopards"), ("accordion", "accordion")],
                   lambda c, i, s: f"{c}/image_{i:04d}.jpg"),
    "oxford_pets": ("oxford_pets", "images", "OxfordPets",
                    [("abyssinian", "Abyssinian"), ("american_bulldog", "american_bulldog"),
                     ("beagle", "beagle")],
                    lambda c, i, s: f"{c}_{i}.jpg"),
    "stanford_cars": ("stanford_cars", "", "StanfordCars",
                      [("2000 AM General Hummer SUV", "a"), ("2012 Acura RL Sedan", "b"),
                       ("2012 Audi TTS Coupe", "c")],
                      lambda c, i, s: f"cars_{'test' if s == 'test' else 'train'}/{c}{i:04d}.jpg"),
    "oxford_flowers": ("oxford_flowers", "jpg", "OxfordFlowers",
                       [("pink primrose", "a"), ("hard-leaved pocket orchid", "b"),
                        ("canterbury bells", "c")],
                       lambda c, i, s: f"image_{ord(c) * 1000 + i:05d}.jpg"),
    "food101": ("food-101", "images", "Food101",
                [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs"),
                 ("baklava", "baklava")],
                lambda c, i, s: f"{c}/{1000 + i}.jpg"),
    "sun397": ("sun397", "SUN397", "SUN397",
               [("abbey", "a/abbey"), ("shop bakery", "b/bakery/shop"), ("outdoor apse", "a/apse/outdoor")],
               lambda c, i, s: f"{c}/sun_{i:05d}.jpg"),
    "dtd": ("dtd", "images", "DescribableTextures",
            [("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided")],
            lambda c, i, s: f"{c}/{c}_{i:04d}.jpg"),
    "eurosat": ("eurosat", "2750", "EuroSAT",
                [("Annual Crop Land", "AnnualCrop"), ("Forest", "Forest"), ("Sea or Lake", "SeaLake")],
                lambda c, i, s: f"{c}/{c}_{i}.jpg"),
    "ucf101": ("ucf101", "UCF-101-midframes", "UCF101",
               [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Archery", "Archery"),
                ("Baby_Crawling", "Baby_Crawling")],
               lambda c, i, s: f"{c}/v_{c.replace('_', '')}_g{i:02d}_c01.jpg"),
}
TEMPLATES = {"oxford_pets": "a photo of a {}, a type of pet.",
             "oxford_flowers": "a photo of a {}, a type of flower.",
             "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "{} texture.",
             "eurosat": "a centered satellite photo of {}.", "food101": "a photo of {}, a type of food.",
             "ucf101": "a photo of a person doing {}."}
COUNTS = {"train": 5, "val": 2, "test": 3}      # images per class in each split


def split_rows(name: str) -> Dict[str, List[list]]:
    """The split file content of a miniature `name` (rows [relative path, label, classname])."""
    _, _, _, classes, path = SPLIT_SPECS[name]
    rows: Dict[str, List[list]] = {k: [] for k in COUNTS}
    start = {"train": 0, "val": 100, "test": 200}
    for label, (cname, key) in enumerate(classes):
        for split, n in COUNTS.items():
            rows[split] += [[path(key, start[split] + i, split), label, cname] for i in range(n)]
    return rows


def make_split_dataset(root: Path, name: str, with_split: bool = True) -> Tuple[Path, Dict]:
    """Build `root/<folder>/` of a split-file dataset; return (dataset folder, split rows)."""
    folder, images, split_name, classes, _ = SPLIT_SPECS[name]
    ddir = root / folder
    image_dir = ddir / images if images else ddir
    rows = split_rows(name)
    touch_images(image_dir / r[0] for k in rows for r in rows[k])
    if with_split:
        (ddir / f"split_zhou_{split_name}.json").write_text(json.dumps(rows))
    if name == "oxford_pets":
        (ddir / "annotations").mkdir()
    if name == "oxford_flowers":
        cat = {str(i + 1): c for i, (c, _) in enumerate(classes)}
        (ddir / "cat_to_name.json").write_text(json.dumps(cat))
    if name == "dtd":
        (ddir / "labels").mkdir()
        (ddir / "imdb").mkdir()
    if name == "food101":
        (ddir / "meta").mkdir()
    return ddir, rows


FGVC_VARIANTS = ["707-320", "A300B4", "Boeing 717", "F-16A/B"]


def make_fgvc(root: Path) -> Dict[str, List[Tuple[str, str]]]:
    """`fgvc_aircraft/` with variants.txt and images_variant_*.txt; returns split -> [(id, variant)]."""
    ddir = root / "fgvc_aircraft"
    (ddir / "images").mkdir(parents=True)
    (ddir / "variants.txt").write_text("".join(v + "\n" for v in FGVC_VARIANTS))
    out = {}
    for s, base in (("train", 1000000), ("val", 2000000), ("test", 3000000)):
        items = [(f"{base + 10 * v + i:07d}", var) for v, var in enumerate(FGVC_VARIANTS)
                 for i in range(3)]
        (ddir / f"images_variant_{s}.txt").write_text("".join(f"{i} {v}\n" for i, v in items))
        touch_images(ddir / "images" / f"{i}.jpg" for i, _ in items)
        out[s] = items
    return out


WNIDS = [f"n{1440764 + 37 * i:08d}" for i in range(1000)]
NAMES = [f"class_{i} name" if i % 3 else f"thing {i}" for i in range(1000)]
A_IDX = list(range(0, 1000, 5))          # 200 classes
R_IDX = list(range(2, 1000, 5))          # 200 classes


def classnames_text() -> str:
    return "".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES))


FAMILY = ("imagenet", "imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition")


def make_imagenet_family(root: Path, parts=FAMILY) -> None:
    """imagenet/, imagenetv2/, imagenet-sketch/ (no classnames.txt: uses imagenet's),
    imagenet-adversarial/, imagenet-rendition/ (those in `parts`); one image per class (two for
    the first 3 ImageNet train classes)."""
    paths = []
    if "imagenet" in parts:
        inet = root / "imagenet"
        (inet / "images").mkdir(parents=True)
        (inet / "classnames.txt").write_text(classnames_text())
        for i, w in enumerate(WNIDS):
            paths += [inet / "images/train" / w / f"{w}_{k}.JPEG" for k in range(2 if i < 3 else 1)]
            paths.append(inet / "images/val" / w / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    if "imagenetv2" in parts:
        v2 = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
        paths += [v2 / str(i) / f"{i:040x}.jpeg" for i in range(1000)]
    if "imagenet-sketch" in parts:
        paths += [root / "imagenet-sketch/images" / w / f"sketch_{i}.JPEG" for i, w in enumerate(WNIDS)]
    if "imagenet-adversarial" in parts:
        paths += [root / "imagenet-adversarial/imagenet-a" / WNIDS[i] / f"0.000_{i}.jpg" for i in A_IDX]
    if "imagenet-rendition" in parts:
        paths += [root / "imagenet-rendition/imagenet-r" / WNIDS[i] / f"art_{i}.jpg" for i in R_IDX]
    touch_images(paths)
    for d in ("imagenetv2", "imagenet-adversarial", "imagenet-rendition"):
        if d in parts:
            (root / d / "classnames.txt").write_text(classnames_text())
    if "imagenet-adversarial" in parts:
        (root / "imagenet-adversarial/imagenet-a/README.txt").write_text("ImageNet-A\n")


def make_class_folders(root: Path, classes: Dict[str, int], data: bytes = JPEG) -> None:
    """`root/<class>/img_<i>.jpg` with the given number of images per class."""
    for c, n in classes.items():
        touch_images((root / c / f"img_{i:03d}.jpg" for i in range(n)), data)
