"""Mini-world benchmarks (README, "Mini world") as split-file datasets: `make_data(root)` writes
<root>/<task>/images/<split>/<label>_<k>.png and <root>/<task>/split_<task>.json. Image k of class
`label` is drawn from random.Random("miniworld:<task>:<split>:<label>:<k>"), so every image is
deterministic, and the splits (and pre-training, which uses other seeds) never share a stream.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

from ..data.datasets import DatasetReader
from ..data.splits import DatasetError, DatasetSplits, check_files_exist, parse_split, split_info
from ..registry import DATASETS
from .world import COLOURS, SHAPES, render, sample_scene

log = logging.getLogger(__name__)

MAKE_DATA = "python -m dcp.miniworld make-data --root {root}"
FORMAT_VERSION = 1                   # bump when the generator's output changes
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """A classification task of the mini world: `classes[label]` -> (shape, colour or None)."""
    name: str
    domain: str
    classes: Tuple[Tuple[str, Optional[str]], ...]
    per_class: Tuple[int, int, int]           # images per class in train, val, test

    @property
    def classnames(self) -> List[str]:
        return [f"{c} {s}" if c else s for s, c in self.classes]


def _compounds() -> Tuple[Tuple[str, str], ...]:
    """8 colours x 5 shapes as (shape, colour), in the two colours of a checkerboard over
    (colour, shape): the first 20 (base) and the last 20 (novel) each hold every colour and shape."""
    shapes = ("circle", "square", "triangle", "star", "heart")
    return tuple((s, c) for parity in (0, 1) for ci, c in enumerate(COLOURS)
                 for si, s in enumerate(shapes) if (ci + si) % 2 == parity)


TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("miniworld_shapes", "photo", tuple((s, None) for s in SHAPES), (32, 8, 40)),
    Task("miniworld_shapes_sketch", "sketch", tuple((s, None) for s in SHAPES), (32, 8, 40)),
    Task("miniworld_objects", "photo", _compounds(), (20, 4, 10)),
]}


def task_images(task: Task, split: str) -> Iterator[Tuple[str, int, Image.Image]]:
    """(relative path, label, image) of every image of `split`, in split-file order."""
    for label, (shape, colour) in enumerate(task.classes):
        for k in range(task.per_class[SPLITS.index(split)]):
            rng = random.Random(f"miniworld:{task.name}:{split}:{label}:{k}")
            scene = sample_scene(rng, task.domain, shape=shape, colour=colour)
            yield f"{split}/{label:02d}_{k:03d}.png", label, render(scene, rng)


def make_task(task: Task, folder: Path) -> Path:
    """Write `folder` (= <root>/<task>) atomically: images/ and split_<task>.json."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task.name}.", dir=folder.parent))
    try:
        split = {"meta": {"created_by": "dcp.miniworld", "version": FORMAT_VERSION,
                          "task": task.name, "domain": task.domain}}
        names = task.classnames
        for s in SPLITS:
            (tmp / "images" / s).mkdir(parents=True)
            split[s] = []
            for rel, label, image in task_images(task, s):
                image.save(tmp / "images" / rel)
                split[s].append([rel, label, names[label]])
        (tmp / f"split_{task.name}.json").write_text(json.dumps(split, indent=0), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def make_data(root, tasks: Sequence[str] = (), force: bool = False) -> Path:
    """Write <root>/<task>/ for `tasks` (default: all) and return `root`; a folder written by the
    current FORMAT_VERSION is kept unless `force`."""
    root = Path(root).expanduser()
    for name in tasks or TASKS:
        if name not in TASKS:
            raise DatasetError(f"unknown mini-world task {name!r}; tasks: {', '.join(TASKS)}")
        folder = root / name
        if not force and _is_current(folder / f"split_{name}.json"):
            log.info("%s is up to date", folder)
            continue
        make_task(TASKS[name], folder)
        log.info("wrote %s (%s images per class in train/val/test)", folder,
                 "/".join(map(str, TASKS[name].per_class)))
    return root


def _is_current(split: Path) -> bool:
    try:
        return json.loads(split.read_text(encoding="utf-8")).get("meta", {}).get("version") == FORMAT_VERSION
    except (OSError, ValueError):
        return False


class MiniWorldDataset(DatasetReader):
    """A mini-world task folder written by `make_data`."""

    def __init__(self, name: str):
        super().__init__(name)
        self.folder = name
        self.signatures = ((f"split_{name}.json", "images"),)
        self.layout = (f"  {name}/\n    images/{{train,val,test}}/*.png\n    split_{name}.json\n"
                       f"  (generate it with `{MAKE_DATA.format(root='<data root>')}`)")

    def locate(self, root: Path, split_file: str = "") -> Path:
        if (root / self.folder).is_dir():
            return root / self.folder
        if root.name == self.folder or self.detect(root):
            return root
        raise DatasetError(f"{self.name}: dataset folder not found: {root / self.folder}. Generate "
                           f"the mini-world benchmarks with `{MAKE_DATA.format(root=root)}`")

    def read(self, dataset_dir: Path, split_file: str) -> DatasetSplits:
        path = Path(split_file).expanduser() if split_file else dataset_dir / f"split_{self.name}.json"
        if not path.is_file():
            raise DatasetError(f"{self.name}: split file not found: {path}. Generate the mini-world "
                               f"benchmarks with `{MAKE_DATA.format(root=dataset_dir.parent)}`")
        image_dir = dataset_dir / "images"
        data, classnames, _ = parse_split(path, image_dir)
        check_files_exist((d.path for k in SPLITS for d in data[k]), f"split file {path}", self.layout)
        info = split_info("mini-world benchmark generated by dcp.miniworld", path)
        return DatasetSplits(self.name, data["train"], data["val"], data["test"], classnames,
                             self.template, info, str(dataset_dir), str(image_dir))


for _name in TASKS:
    DATASETS.register(_name)(MiniWorldDataset)
