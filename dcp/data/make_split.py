"""Create a seeded train/val/test split file in `data_splits/` (never in the data folder).

    python -m dcp.data.make_split food101 --root /data            # -> data_splits/split_dcp_Food101.json
    python -m dcp.data.make_split folder --root /data/my_photos   # <class>/ folders of your own
    python -m dcp.data.make_split csv --root /data/my_list.csv    # rows path,label[,classname]

Per class, the images sorted by path are shuffled by `random.Random(f"dcp-split:{seed}:{class}")`
and cut into round(n * p_train) train, round(n * p_val) val and the rest test (CoOp's
proportions 0.5 / 0.2 / 0.3 by default). Class labels follow sorted folder names (CoOp's
`read_and_split_data`), with CoOp's ignored folders and class renames for Caltech101 and
EuroSAT. A generated split is flagged as not comparable with published results.
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from dcp.utils import atomic_write_text

from .datasets import _reader, read_csv_rows
from .splits import (SPLITS_DIR, DatasetError, json_rows_text, list_class_dirs, list_images,
                     obtain_hint)

log = logging.getLogger(__name__)

# dataset -> (ignored class folders, folder -> class name) for folder-per-class image folders
FOLDER_DATASETS: Dict[str, Tuple[Sequence[str], Dict[str, str]]] = {
    "caltech101": (("BACKGROUND_Google", "Faces_easy"),
                   {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
                    "Motorbikes": "motorbike"}),
    "dtd": ((), {}),
    "eurosat": ((), {"AnnualCrop": "Annual Crop Land", "HerbaceousVegetation":
                     "Herbaceous Vegetation Land", "Highway": "Highway or Road",
                     "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
                     "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
                     "SeaLake": "Sea or Lake"}),
    "food101": ((), {}),
    "ucf101": ((), {}),
}
SUPPORTED = sorted(FOLDER_DATASETS) + ["sun397", "folder", "csv"]
Groups = Dict[Tuple[int, str], List[str]]       # (label, classname) -> relative image paths


def _csv_groups(path: Path) -> Groups:
    if not path.is_file():
        raise DatasetError(f"make_split csv: {path} is not a CSV file of path,label[,classname]")
    groups: Groups = defaultdict(list)
    for p, label, cname in read_csv_rows(path):
        groups[(label, cname)].append(p)
    labels = sorted({lab for lab, _ in groups})
    if labels != list(range(len(labels))) or len(labels) != len(groups):
        raise DatasetError(f"make_split csv: {path} must use labels 0..C-1 with one class name "
                           f"each; got labels {labels[:10]}")
    return dict(sorted(groups.items()))


def collect(dataset: str, root: Path) -> Tuple[Path, Groups, str, Path]:
    """(folder the paths are relative to, the images by class, default output name, the data
    folder that must not be written to)."""
    if dataset == "csv":
        return root.parent, _csv_groups(root), root.stem, root.parent
    if dataset == "folder":
        base, name, protect = root, root.name, root
        classes = [(c, c) for c in list_class_dirs(root)]
    else:
        reader = _reader(dataset)
        protect = reader.locate(root)
        base, name = protect / reader.images, reader.split_name
        reader.require_dir(base, "image folder")
        if dataset == "sun397":        # <letter>/<name>[/<sub>] leaves, named "<sub> <name>"
            leaves = [p.relative_to(base).as_posix() for p in sorted(base.rglob("*")) if p.is_dir()]
            classes = [(rel, " ".join(rel.split("/")[1:][::-1])) for rel in leaves
                       if len(rel.split("/")) >= 2 and list_images(base / rel)]
        else:
            ignored, renames = FOLDER_DATASETS[dataset]
            classes = [(c, renames.get(c, c)) for c in list_class_dirs(base) if c not in ignored]
    if not classes:
        raise DatasetError(f"make_split {dataset}: no class folders in {base}")
    groups: Groups = {}
    for label, (folder, cname) in enumerate(classes):
        files = list_images(base / folder)
        if not files:
            raise DatasetError(f"make_split {dataset}: empty class folder {base / folder}")
        groups[(label, cname)] = [f"{folder}/{Path(f).name}" for f in files]
    return base, groups, name, protect


def split_groups(groups: Groups, seed: int, p_train: float, p_val: float,
                 where: Path) -> Dict[str, List[list]]:
    """The split file's lists: per class, its shuffled images cut by the proportions."""
    out: Dict[str, List[list]] = {"train": [], "val": [], "test": []}
    for (label, cname), paths in groups.items():
        items = sorted(paths)
        random.Random(f"dcp-split:{seed}:{cname}").shuffle(items)
        n = len(items)
        n_train, n_val = round(n * p_train), round(n * p_val)
        if n_train < 1 or n_val < 1 or n - n_train - n_val < 1:
            raise DatasetError(f"make_split: class {cname!r} in {where} has {n} image(s): too few "
                               f"for a train/val/test split with p_train={p_train}, p_val={p_val}")
        for key, part in (("train", items[:n_train]), ("val", items[n_train:n_train + n_val]),
                          ("test", items[n_train + n_val:])):
            out[key] += [[p, label, cname] for p in part]
    return out


def make_split(dataset: str, root: str, seed: int = 1, p_train: float = 0.5, p_val: float = 0.2,
               out: Optional[str] = None, force: bool = False) -> Path:
    """Write a seeded split file for `dataset` at `root`; return its path."""
    if dataset not in SUPPORTED:
        hint = obtain_hint(dataset)
        raise DatasetError(f"make_split does not support {dataset!r} (supported: "
                           f"{', '.join(SUPPORTED)})" + (f"; {hint}" if hint else ""))
    if not (0 < p_train < 1 and 0 < p_val < 1 and p_train + p_val < 1):
        raise DatasetError(f"make_split: need 0 < p_train, p_val and p_train + p_val < 1, got "
                           f"{p_train}, {p_val}")
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DatasetError(f"make_split: data root not found: {root_path}")
    base, groups, name, protect = collect(dataset, root_path)
    target = Path(out).expanduser().absolute() if out else SPLITS_DIR / f"split_dcp_{name}.json"
    # a CSV's folder is protected itself (not its sub-folders); image folders entirely
    inside = target.parent == protect if dataset == "csv" else target.is_relative_to(protect)
    if inside or (dataset != "csv" and target.is_relative_to(base)):
        raise DatasetError(f"make_split: refusing to write {target} inside the data folder "
                           f"{protect}: data folders are never modified")
    if target.exists() and not force:
        raise DatasetError(f"make_split: {target} exists; pass --force to replace it")
    lists = split_groups(groups, seed, p_train, p_val, base)
    meta = {"created_by": "dcp.data.make_split", "dataset": dataset, "seed": seed,
            "p_train": p_train, "p_val": p_val, "image_dir": str(base)}
    atomic_write_text(target, json_rows_text({"meta": meta}, lists))
    log.info("wrote %s", target)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dcp.data.make_split", description=__doc__.split("\n\n")[0],
        epilog=("The split is written to data_splits/split_dcp_<name>.json of the project (found "
                "there by build_dataset), or to --out; never into the data folder. Standard "
                "datasets whose published split exists (oxford_pets, stanford_cars, "
                "oxford_flowers, ...) should use the published file: see data_splits/MANIFEST.json."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help=f"one of {', '.join(SUPPORTED)} (folder / csv: your own data)")
    ap.add_argument("--root", required=True,
                    help="data root (or the dataset folder); for folder: the folder of <class>/ "
                         "folders; for csv: the CSV file")
    ap.add_argument("--seed", type=int, default=1, help="split seed (default 1)")
    ap.add_argument("--p-train", type=float, default=0.5, help="train share per class (default 0.5)")
    ap.add_argument("--p-val", type=float, default=0.2, help="val share per class (default 0.2)")
    ap.add_argument("--out", default=None, help="output file (default data_splits/split_dcp_<name>.json)")
    ap.add_argument("--force", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = make_split(args.dataset, args.root, args.seed, args.p_train, args.p_val, args.out,
                          args.force)
    except DatasetError as e:
        log.error("%s", e)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
