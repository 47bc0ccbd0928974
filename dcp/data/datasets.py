"""Readers of CoOp's benchmark folders, ImageNet and its variants, and users' own data, each a
`DatasetReader` registered in `dcp.registry.DATASETS` (layouts: README.md, "Datasets"). Folders
are only read; class names are raw, underscores kept (docs/methods.md, "Conventions")."""
from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from dcp.registry import DATASETS
from dcp.utils import Progress

from .splits import (SPLITS_DIR, DatasetError, DatasetSplits, Datum, check_files_exist,
                     check_split_checksum, find_split_file, list_class_dirs, list_images,
                     load_manifest, parse_split, parse_split_dict, read_json, split_info)

log = logging.getLogger(__name__)

PHOTO = "a photo of a {}."


class DatasetReader:
    """A registered reader, instantiated with its name: `read(dataset_dir, split_file)`."""
    folder = ""                      # folder name under the data root ("" = users' own data)
    template = PHOTO                 # CoOp's zero-shot template (docs/methods.md, "The family")
    layout = ""                      # expected layout, quoted in errors
    signatures: Tuple[Tuple[str, ...], ...] = ()   # any group fully present -> recognised
    fewshot_draw = "per_class"       # the draw data.fewshot_draw=auto picks (docs/methods.md)
    duplicates_ok: Tuple[str, ...] = ()  # names the published class list itself repeats
    defined_by = ""                  # what defines a dataset that takes no split file

    def __init__(self, name: str):
        self.name = name

    def detect(self, folder: Path) -> bool:
        """True when `folder` looks like this dataset's folder (by its content)."""
        return any(all((folder / n).exists() for n in group) for group in self.signatures)

    def locate(self, root: Path, split_file: str = "") -> Path:
        """The dataset folder: `root/<folder>`, or `root` itself when it is that folder."""
        if (root / self.folder).is_dir():
            return root / self.folder
        if root.name == self.folder or self.detect(root) or (split_file and self.has_images(root)):
            return root
        raise DatasetError(f"{self.name}: dataset folder not found: {root / self.folder} "
                           f"(nor is {root} itself laid out as {self.name}). Expected layout "
                           f"under the data root:\n{self.layout}")

    def has_images(self, folder: Path) -> bool:
        """True when `folder` holds this dataset's image folder(s) (used with an explicit split)."""
        return False

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        raise NotImplementedError

    def require_dir(self, path: Path, what: str) -> None:
        if not path.is_dir():
            raise DatasetError(f"{self.name}: {what} not found: {path}. Expected layout:\n"
                               f"{self.layout}")


# --------------------------------------------------------------------------- split-file datasets
class SplitFileDataset(DatasetReader):
    """A benchmark defined by a CoOp split file, paths relative to its image folder."""
    fewshot_draw = "dassl"           # a benchmark: draw as the released code does
    images = "images"                # image folder inside the dataset folder ("" = itself)
    split_name = ""                  # split_zhou_<split_name>.json
    required: Tuple[str, ...] = ()   # sub-folders that must exist (default: `images`)

    def has_images(self, folder: Path) -> bool:
        return all((folder / sub).is_dir() for sub in self.required or (self.images,))

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        image_dir = dataset_dir / self.images          # "" = the dataset folder itself
        for sub in self.required or (self.images,):
            self.require_dir(dataset_dir / sub, "image folder")
        path = find_split_file(self.name, self.split_name, dataset_dir, split_file, self.layout)
        data, classnames, generated = parse_split(path, image_dir)
        check_files_exist((d.path for part in data.values() for d in part), f"split file {path}",
                          self.layout)
        info = check_split_checksum(self.name, path, generated)
        published = load_manifest().get(self.name, {}).get("classes")
        if published and published != len(classnames):
            log.warning("%s: split file %s has %d classes, the published benchmark has %d",
                        self.name, path, len(classnames), published)
        return DatasetSplits(self.name, data["train"], data["val"], data["test"], classnames,
                             self.template, info, str(dataset_dir), str(image_dir))


def _split_layout(folder: str, images: str, split_name: str, extra: str = "") -> str:
    return (f"  {folder}/\n    {images}/  (image files; paths as listed in the split file)\n"
            f"{extra}    split_zhou_{split_name}.json  (or in {SPLITS_DIR}/)")


# name: (folder, image folder, split_zhou_<name>.json, template, signatures, layout lines
# beside the image folder); each becomes a SplitFileDataset subclass named after its split
SPLIT_FILE_DATASETS = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "Caltech101", PHOTO,
                   (("101_ObjectCategories",),), ""),
    "oxford_pets": ("oxford_pets", "images", "OxfordPets", "a photo of a {}, a type of pet.",
                    (("split_zhou_OxfordPets.json",), ("images", "annotations")), "    annotations/\n"),
    "food101": ("food-101", "images", "Food101", "a photo of {}, a type of food.",
                (("split_zhou_Food101.json",), ("images", "meta")), "    meta/\n"),
    "sun397": ("sun397", "SUN397", "SUN397", PHOTO, (("SUN397",), ("split_zhou_SUN397.json",)), ""),
    "dtd": ("dtd", "images", "DescribableTextures", "{} texture.",
            (("split_zhou_DescribableTextures.json",), ("images", "labels"), ("images", "imdb")),
            "    labels/, imdb/  (as extracted)\n"),
    "eurosat": ("eurosat", "2750", "EuroSAT", "a centered satellite photo of {}.",
                (("2750",), ("split_zhou_EuroSAT.json",)), ""),
    "ucf101": ("ucf101", "UCF-101-midframes", "UCF101", "a photo of a person doing {}.",
               (("UCF-101-midframes",), ("split_zhou_UCF101.json",)), ""),
}
for _name, (_folder, _images, _split, _template, _signatures, _extra) in SPLIT_FILE_DATASETS.items():
    _facts = dict(folder=_folder, images=_images, split_name=_split, template=_template,
                  signatures=_signatures, layout=_split_layout(_folder, _images, _split, _extra))
    DATASETS.register(_name)(type(_split, (SplitFileDataset,), _facts))


@DATASETS.register("stanford_cars")
class StanfordCars(SplitFileDataset):
    folder, images, split_name = "stanford_cars", "", "StanfordCars"
    required = ("cars_train", "cars_test")
    signatures = (("split_zhou_StanfordCars.json",), ("cars_train", "cars_test"))
    layout = ("  stanford_cars/\n    cars_train/\n    cars_test/\n"
              f"    split_zhou_StanfordCars.json  (paths like cars_train/00001.jpg; or in {SPLITS_DIR}/)")


@DATASETS.register("oxford_flowers")
class OxfordFlowers(SplitFileDataset):
    folder, images, split_name = "oxford_flowers", "jpg", "OxfordFlowers"
    template = "a photo of a {}, a type of flower."
    signatures = (("split_zhou_OxfordFlowers.json",), ("jpg",))
    layout = _split_layout(folder, images, split_name, "    cat_to_name.json\n")

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        """The split, its class names checked against `cat_to_name.json` (key = label + 1)."""
        splits = super().read(dataset_dir, split_file)
        meta, split = dataset_dir / "cat_to_name.json", splits.split_info["file"]
        if not meta.is_file():
            log.info("oxford_flowers: %s not found; class names come from the split file", meta)
            return splits
        cat = read_json(meta)
        n = len(cat) if isinstance(cat, dict) else 0
        if not n or sorted(cat) != sorted(str(i) for i in range(1, n + 1)):
            raise DatasetError(f"{meta}: expected a JSON object mapping \"1\"..\"N\" to flower "
                               "names (N = 102)")
        if n != splits.num_classes:
            raise DatasetError(f"oxford_flowers: {split} has {splits.num_classes} classes but "
                               f"{meta} names {n}")
        for label, name in enumerate(splits.classnames):
            if cat[str(label + 1)] != name:
                raise DatasetError(f"oxford_flowers: label {label} is {name!r} in {split} but "
                                   f"{cat[str(label + 1)]!r} in {meta} (key = label + 1)")
        return splits


# --------------------------------------------------------------------------- FGVC-Aircraft
@DATASETS.register("fgvc_aircraft")
class FGVCAircraft(DatasetReader):
    """`images_variant_<split>.txt` lines are `<image id> <variant name>`; images `images/<id>.jpg`;
    label = line index of the variant in `variants.txt`."""
    fewshot_draw = "dassl"
    folder = "fgvc_aircraft"
    template = "a photo of a {}, a type of aircraft."
    signatures = (("variants.txt",), ("images_variant_train.txt",))
    layout = ("  fgvc_aircraft/   (the `data/` folder of fgvc-aircraft-2013b, renamed)\n"
              "    images/<image id>.jpg\n    variants.txt\n"
              "    images_variant_train.txt, images_variant_val.txt, images_variant_test.txt")
    defined_by = "its images_variant_*.txt files"

    def _lines(self, path: Path) -> List[str]:
        if not path.is_file():
            raise DatasetError(f"fgvc_aircraft: {path.name} not found: {path}. Expected layout:\n"
                               f"{self.layout}")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f]

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        image_dir, variants_path = dataset_dir / "images", dataset_dir / "variants.txt"
        self.require_dir(image_dir, "image folder")
        variants = [v for v in self._lines(variants_path) if v]
        if len(set(variants)) != len(variants):
            raise DatasetError(f"fgvc_aircraft: {variants_path} lists a variant twice")
        label_of = {v: i for i, v in enumerate(variants)}
        data: Dict[str, List[Datum]] = {}
        for split in ("train", "val", "test"):
            path = dataset_dir / f"images_variant_{split}.txt"
            data[split] = []
            for n, line in enumerate(self._lines(path), 1):
                if not line:
                    continue
                image_id, _, variant = line.partition(" ")
                if variant not in label_of:
                    raise DatasetError(f"fgvc_aircraft: {path}:{n}: variant {variant!r} is not in "
                                       f"{variants_path} (expected `<image id> <variant name>`)")
                data[split].append(Datum(str(image_dir / f"{image_id}.jpg"), label_of[variant], variant))
        empty = sorted(set(variants) - {d.classname for d in data["train"]})
        if empty:
            raise DatasetError(f"fgvc_aircraft: variant {empty[0]!r} of {variants_path} has no "
                               f"image in images_variant_train.txt ({len(empty)} empty class(es))")
        check_files_exist((d.path for part in data.values() for d in part),
                          f"fgvc_aircraft's images_variant_*.txt in {dataset_dir}", self.layout)
        if len(variants) != 100:
            log.warning("fgvc_aircraft: %s lists %d variants, the benchmark has 100",
                        variants_path, len(variants))
        info = split_info("defined by images_variant_{train,val,test}.txt",
                          dataset_dir / "images_variant_train.txt")
        return DatasetSplits(self.name, data["train"], data["val"], data["test"], variants,
                             self.template, info, str(dataset_dir), str(image_dir))


# --------------------------------------------------------------------------- ImageNet family
CLASSNAMES_HINT = ("classnames.txt (`<wnid> <class name>` per line, 1000 lines): CoOp's "
                   "https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view")


def read_imagenet_classnames(path: Path) -> List[Tuple[str, str]]:
    """[(wnid, class name)] in file order (= ImageNet label order) from a `classnames.txt`."""
    if not path.is_file():
        raise DatasetError(f"ImageNet class list not found: {path}; expected {CLASSNAMES_HINT}")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            wnid, _, name = line.strip().partition(" ")
            if not name.strip():
                raise DatasetError(f"{path}:{n}: expected `<wnid> <class name>`, got {line.strip()!r}")
            out.append((wnid, name.strip()))
    wnids = [w for w, _ in out]
    if len(out) != 1000 or len(set(wnids)) != len(out):
        raise DatasetError(f"{path}: expected 1000 lines with distinct wnids, got {len(out)} lines "
                           f"({len(set(wnids))} distinct)")
    if wnids != sorted(wnids):
        log.warning("%s is not sorted by wnid: labels follow the file order, CoOp's ImageNet "
                    "loader uses sorted folder order", path)
    return out


class ImageNetFamily(DatasetReader):
    """Folder-per-class datasets in ImageNet's label space (classnames.txt)."""
    # CoOp's classnames.txt names two pairs of classes alike (n03773504 / n04008634 "missile",
    # n04355933 / n04356056 "sunglasses"); the published results are with them, so they pass
    duplicates_ok = ("missile", "sunglasses")
    defined_by = "its folders"

    def read_folders(self, folder: Path, folders: Sequence[str], names: Sequence[str], what: str,
                     desc: str) -> List[Datum]:
        """The images of `folder`, which must hold exactly the class folders `folders` (label =
        index in `folders`, class name `names[label]`); a mismatch names the difference."""
        self.require_dir(folder, what)
        found = list_class_dirs(folder)
        missing, extra = sorted(set(folders) - set(found)), sorted(set(found) - set(folders))
        if missing or extra:
            loose = sum(1 for e in os.scandir(folder) if e.is_file()) if not found else 0
            raise DatasetError(
                f"{self.name}: {folder} has {len(found)} class folders, expected {len(folders)}"
                + (f"; missing e.g. {missing[:3]}" if missing else "")
                + (f"; unexpected e.g. {extra[:3]}" if extra else "")
                + (f"; it holds {loose} loose files: images must be sorted into one folder per "
                   "class" if loose else "") + f". Expected layout:\n{self.layout}")
        items: List[Datum] = []
        for label, (sub, name) in enumerate(Progress(list(zip(folders, names)), desc=desc)):
            files = list_images(folder / sub)
            if not files:
                raise DatasetError(f"{self.name}: empty class folder {folder / sub} (class "
                                   f"{name!r}): expected its images there")
            items += [Datum(p, label, name) for p in files]
        return items


@DATASETS.register("imagenet")
class ImageNet(ImageNetFamily):
    """train = `images/train`, test = `images/val`; `val` is the test set too, as in CoOp (no
    model selection: docs/methods.md, "Training")."""
    fewshot_draw = "dassl"
    folder = "imagenet"
    signatures = (("images/train", "classnames.txt"), ("images/train", "images/val"))
    layout = ("  imagenet/\n    images/train/<wnid>/*.JPEG  (1000 folders like n01440764)\n"
              "    images/val/<wnid>/*.JPEG\n    classnames.txt  (`<wnid> <class name>` lines)")
    defined_by = "its images/train and images/val folders"

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        classes = read_imagenet_classnames(dataset_dir / "classnames.txt")
        wnids, names = [w for w, _ in classes], [n for _, n in classes]
        image_dir = dataset_dir / "images"
        train, test = (self.read_folders(image_dir / split, wnids, names, f"images/{split} folder",
                                         f"listing imagenet {split}") for split in ("train", "val"))
        info = split_info("defined by images/train (train) and images/val (test)")
        return DatasetSplits(self.name, train, test, test, names, self.template, info,
                             str(dataset_dir), str(image_dir))


class ImageNetVariant(ImageNetFamily):
    """An evaluation-only variant: the class folders of `images` are the test list (train and
    val empty); `classnames.txt` is its own copy, else `<root>/imagenet/`'s."""
    subset: Optional[int] = None     # A, R: 200 classes, labels 0..199 in sorted-wnid order

    def folder_labels(self, image_dir: Path, wnids: List[str],
                      classnames: Path) -> Tuple[List[str], List[int]]:
        """(class folder names, their ImageNet labels)."""
        if not self.subset:
            return wnids, list(range(len(wnids)))
        found = list_class_dirs(image_dir)
        unknown = [f for f in found if f not in set(wnids)]
        if unknown:
            raise DatasetError(f"{self.name}: folder {image_dir / unknown[0]} is not a wnid of "
                               f"{classnames}. Expected layout:\n{self.layout}")
        if len(found) != self.subset:
            raise DatasetError(f"{self.name}: {image_dir} has {len(found)} class folders, "
                               f"expected the {self.subset}-class subset. Expected layout:\n"
                               f"{self.layout}")
        return found, [wnids.index(f) for f in found]

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        image_dir = dataset_dir / self.images
        self.require_dir(image_dir, "image folder")
        classnames = dataset_dir / "classnames.txt"
        shared = dataset_dir.parent / "imagenet" / "classnames.txt"
        if not classnames.is_file() and shared.is_file():
            log.info("%s: using %s (no classnames.txt in %s)", self.name, shared, dataset_dir)
            classnames = shared
        classes = read_imagenet_classnames(classnames)
        folders, in1k = self.folder_labels(image_dir, [w for w, _ in classes], classnames)
        names = [classes[i][1] for i in in1k]
        test = self.read_folders(image_dir, folders, names, "image folder", f"listing {self.name}")
        info = split_info("evaluation only: every image is a test image")
        return DatasetSplits(self.name, [], [], test, names, self.template, info, str(dataset_dir),
                             str(image_dir), imagenet_indices=in1k if self.subset else None)


def _variant_layout(folder: str, images: str, classes: str) -> str:
    return f"  {folder}/\n    {images}/{classes}\n    classnames.txt  (a copy of imagenet/classnames.txt)"


@DATASETS.register("imagenetv2")
class ImageNetV2(ImageNetVariant):
    """Folders `0`..`999` named by ImageNet label index."""
    folder, images = "imagenetv2", "imagenetv2-matched-frequency-format-val"
    signatures = ((images,),)
    layout = _variant_layout(folder, images, "<0..999>/*.jpeg")

    def folder_labels(self, image_dir: Path, wnids: List[str],
                      classnames: Path) -> Tuple[List[str], List[int]]:
        return [str(i) for i in range(len(wnids))], list(range(len(wnids)))


@DATASETS.register("imagenet_sketch")
class ImageNetSketch(ImageNetVariant):
    folder, images = "imagenet-sketch", "images"
    signatures = (("images", "classnames.txt"),)
    layout = _variant_layout(folder, images, "<wnid>/*.JPEG  (1000 folders like n01440764)")

    def detect(self, folder: Path) -> bool:
        return super().detect(folder) and not (folder / "images" / "train").is_dir()


@DATASETS.register("imagenet_a")
class ImageNetA(ImageNetVariant):
    folder, images, subset = "imagenet-adversarial", "imagenet-a", 200
    signatures = ((images,),)
    layout = _variant_layout(folder, images, "<wnid>/*.jpg  (200 folders like n01498041)")


@DATASETS.register("imagenet_r")
class ImageNetR(ImageNetVariant):
    folder, images, subset = "imagenet-rendition", "imagenet-r", 200
    signatures = ((images,),)
    layout = _variant_layout(folder, images, "<wnid>/*.jpg  (200 folders like n01443537)")


# --------------------------------------------------------------------------- users' own data
class UserData(DatasetReader):
    """Users' own data, given as the data root itself; without a layout that defines the
    splits, a split file made by make_split."""
    no_split = ""                    # the layout that needs no split file, for the error

    def locate(self, root: Path, split_file: str = "") -> Path:
        return root

    def read_split_file(self, base: Path, split_file: str, source: Path, allow_absolute: bool):
        """(data, classnames, split_info) from the split file of `source`: `split_file`, else
        `data_splits/split_dcp_<source name>.json`; paths relative to `base`."""
        default = SPLITS_DIR / f"split_dcp_{source.stem if source.is_file() else source.name}.json"
        path = Path(split_file).expanduser() if split_file else default
        if not path.is_file():
            raise DatasetError(
                f"{self.name}: {source} has no train/val/test split: split file {path} not found. "
                f"Create a seeded one with `python -m dcp.data.make_split {self.name} --root "
                f"{source}` (written to {SPLITS_DIR}/), or pass split_file=<path>, or {self.no_split}")
        data, classnames, _ = parse_split(path, base, allow_absolute)
        check_files_exist((d.path for part in data.values() for d in part), f"split file {path}",
                          f"paths relative to {base}")
        return data, classnames, split_info("user data split file", path)


@DATASETS.register("folder")
class ImageFolder(UserData):
    """`train/<class>/`, `val/<class>/` (or `validation/`, optional), `test/<class>/`; or
    `<class>/` folders plus a split file. Labels follow sorted folder names."""
    layout = ("  <folder>/\n    train/<class>/*.jpg\n    val/<class>/*.jpg  (optional; or validation/)\n"
              "    test/<class>/*.jpg\n  or <folder>/<class>/*.jpg with a split file made by "
              "`python -m dcp.data.make_split folder --root <folder>`")
    no_split = "lay the folder out as train/<class>/, val/<class>/, test/<class>/"

    def detect(self, folder: Path) -> bool:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return True
        return len([d for d in list_class_dirs(folder) if list_images(folder / d)]) >= 2

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        self.require_dir(dataset_dir, "folder")
        if split_file or not (dataset_dir / "train").is_dir():
            data, classnames, info = self.read_split_file(dataset_dir, split_file, dataset_dir, False)
        else:
            data, classnames, info = self.read_tree(dataset_dir)
        return DatasetSplits(self.name, data["train"], data["val"], data["test"], classnames,
                             self.template, info, str(dataset_dir), str(dataset_dir))

    def read_tree(self, root: Path) -> Tuple[Dict[str, List[Datum]], List[str], dict]:
        classnames = list_class_dirs(root / "train")
        if not classnames:
            raise DatasetError(f"folder: {root / 'train'} has no class folders. Expected layout:\n"
                               f"{self.layout}")
        label_of = {c: i for i, c in enumerate(classnames)}
        val_dir = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
        data: Dict[str, List[Datum]] = {"val": []}
        for split, folder in (("train", root / "train"), ("val", val_dir), ("test", root / "test")):
            if folder is None:
                log.info("folder: %s has no val/ folder: the validation list is empty", root)
                continue
            self.require_dir(folder, f"{split} folder")
            data[split] = []
            for c in list_class_dirs(folder):
                if c not in label_of:
                    raise DatasetError(f"folder: class folder {folder / c} has no counterpart in "
                                       f"{root / 'train'} (classes: {classnames[:10]})")
                files = list_images(folder / c)
                if not files and split == "train":
                    raise DatasetError(f"folder: empty class folder {folder / c}: expected its "
                                       "training images there")
                data[split] += [Datum(p, label_of[c], c) for p in files]
            if not data[split]:
                raise DatasetError(f"folder: {folder} holds no images in class folders. Expected "
                                   f"layout:\n{self.layout}")
        return data, classnames, split_info(f"user data: folder layout of {root}")


@DATASETS.register("csv")
class CSVDataset(UserData):
    """`path,label[,classname]` rows (a header row allowed; paths relative to the CSV's folder or
    absolute): `train.csv`, `test.csv` (and optional `val.csv`), or one CSV plus a split file."""
    layout = ("  <folder>/train.csv, val.csv (optional), test.csv  with rows `path,label[,classname]`\n"
              "  or <file>.csv with a split file made by\n"
              "  `python -m dcp.data.make_split csv --root <file>.csv`")
    no_split = "provide train.csv/val.csv/test.csv beside it"

    def detect(self, folder: Path) -> bool:
        return folder.suffix.lower() == ".csv" or ((folder / "train.csv").is_file()
                                                     and (folder / "test.csv").is_file())

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        base = dataset_dir.parent if dataset_dir.is_file() else dataset_dir
        if dataset_dir.is_file():
            data, classnames, info = self.read_split_file(base, split_file, dataset_dir, True)
        else:
            if not (base / "train.csv").is_file() or not (base / "test.csv").is_file():
                raise DatasetError(f"csv: {base} needs train.csv and test.csv. Expected layout:\n"
                                   f"{self.layout}")
            raw = {s: read_csv_rows(base / f"{s}.csv") for s in ("train", "val", "test")
                   if (base / f"{s}.csv").is_file()}
            data, classnames = parse_split_dict(raw, f"CSV files in {base}", base, True,
                                                need_val=False)
            check_files_exist((d.path for part in data.values() for d in part),
                              f"CSV files in {base}", "paths relative to the CSV's folder, or absolute")
            info = split_info(f"user data: CSV files in {base}")
        return DatasetSplits(self.name, data["train"], data["val"], data["test"], classnames,
                             self.template, info, str(base), str(base))


def read_csv_rows(path: Path) -> List[list]:
    """Rows `[path, int label, classname]` of a `path,label[,classname]` CSV (header allowed)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) not in (2, 3):
                raise DatasetError(f"{path}:{n}: expected `path,label[,classname]`, got {row!r}")
            p, label = row[0].strip(), row[1].strip()
            if not re.fullmatch(r"\d+", label):
                if n == 1:          # header
                    continue
                raise DatasetError(f"{path}:{n}: label {label!r} is not a non-negative integer")
            rows.append([p, int(label), row[2].strip() if len(row) == 3 else str(int(label))])
    return rows


# --------------------------------------------------------------------------- entry points
def _reader(name: str) -> DatasetReader:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(DATASETS.names())}")
    return DATASETS.get(name)(name)


def build_dataset(name: str, root: str, *, split_file: str = "",
                  fewshot_cache: bool = True) -> DatasetSplits:
    """Read dataset `name` from `root` (the data root, or the dataset's own folder; for `folder`
    and `csv` the user's folder / CSV file). `split_file` overrides the split-file lookup;
    `fewshot_cache` lets `fewshot()` use the folder's `split_fewshot/shot_K-seed_S.pkl`."""
    reader = _reader(name)
    if not root:
        raise DatasetError(f"{name}: no data root given. Expected layout:\n{reader.layout}")
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DatasetError(f"{name}: data root not found: {path}. Expected layout:\n{reader.layout}")
    dataset_dir = reader.locate(path, split_file)
    if split_file and reader.defined_by:
        raise DatasetError(f"{name} is defined by {reader.defined_by}; split_file={split_file!r} "
                           "is not supported")
    splits = reader.read(dataset_dir, split_file)
    splits.fewshot_cache = fewshot_cache
    splits.fewshot_draw = reader.fewshot_draw
    splits.duplicates_ok = tuple(reader.duplicates_ok)
    log.info("%s: %d classes, %d train / %d val / %d test images from %s", name,
             splits.num_classes, len(splits.train), len(splits.val), len(splits.test),
             splits.dataset_dir)
    return splits


def detect_dataset(path: str) -> Tuple[str, str]:
    """Recognise the dataset at `path` (a data root holding one dataset folder, a dataset's
    folder, or a user's folder / CSV): by folder name first, then by layout. Returns
    `(name, root)` for `build_dataset`; several candidates is an error naming them."""
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise DatasetError(f"data path not found: {p} (expected a data root holding dataset "
                           "folders such as dtd/, one dataset's folder, or a .csv file)")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return "csv", str(p)
        raise DatasetError(f"{p} is a file: expected a data folder or a .csv file")
    readers = [_reader(n) for n in DATASETS.names()]
    standard = [r for r in readers if r.folder]
    by_name = [r.name for r in standard if p.name == r.folder]
    if by_name:
        return by_name[0], str(p.parent)
    inside = [r.name for r in standard if (p / r.folder).is_dir()]
    if len(inside) > 1:
        raise DatasetError(f"{p} is a data root holding several datasets ({', '.join(inside)}): "
                           "name the dataset to use")
    if inside:
        return inside[0], str(p)
    by_layout = ([r.name for r in standard if r.detect(p)]
                 or [r.name for r in readers if not r.folder and r.detect(p)])
    if len(by_layout) > 1:
        raise DatasetError(f"{p} is ambiguous: it is laid out like {' and '.join(by_layout)}; "
                           "name the dataset to use")
    if by_layout:
        return by_layout[0], str(p)
    known = ", ".join(f"{r.folder}/ ({r.name})" for r in standard)
    raise DatasetError(f"cannot recognise a dataset at {p}: expected a data root or one of the "
                       f"dataset folders {known}, or a folder of class folders "
                       "(train/<class>/, test/<class>/), or a .csv file")
