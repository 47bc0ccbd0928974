"""Mini-world benchmarks: generated image folders with split files, read like CoOp's datasets.

    python -m dcp.miniworld make-data --root DATA          # writes DATA/<task>/ for every task
    python run.py --cfg configs/miniworld/dcp.yaml --data DATA --dataset miniworld_objects

Tasks (class names are what zero-shot prompts say, "a photo of a {}."):
    miniworld_shapes          10 shapes ("circle", "star", ...), photo domain, other attributes random
    miniworld_shapes_sketch   the same 10 classes drawn as pencil sketches (domain shift)
    miniworld_objects         40 colour + shape compounds ("red circle", ...); the first 20 labels
                              (base) and the last 20 (novel) each hold every colour and every
                              shape, so base-to-novel asks for new combinations of known words

Each task folder holds `images/<split>/<label>_<index>.png` and `split_<task>.json` in the
standard split-file format `{"train": [[relative_path, label, classname], ...], "val": [...],
"test": [...]}`. Image `i` of a split is drawn from `random.Random("miniworld:<task>:<split>:<i>")`,
so every image is deterministic, and train, val and test (and pre-training, which uses other
seeds) never share a random stream.
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
from ..data.splits import DatasetError, DatasetSplits, check_files_exist, parse_split, sha256_file
from ..registry import DATASETS
from .world import COLOURS, SHAPES, render, sample_scene

log = logging.getLogger(__name__)

MAKE_DATA = "python -m dcp.miniworld make-data --root {root}"
FORMAT_VERSION = 1                   # bump when the generator's output changes


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
    """8 colours x 5 shapes as (shape, colour), a checkerboard over (colour, shape) split in two:
    the first 20 (base) and the last 20 (novel) each hold every colour and every shape."""
    shapes = ("circle", "square", "triangle", "star", "heart")
    cells = [(ci + si) % 2 for ci in range(len(COLOURS)) for si in range(len(shapes))]
    pairs = [(s, c) for c in COLOURS for s in shapes]
    return tuple(p for _, p in sorted(zip(cells, pairs), key=lambda cp: cp[0]))


TASKS: Dict[str, Task] = {t.name: t for t in [
    Task("miniworld_shapes", "photo", tuple((s, None) for s in SHAPES), (32, 8, 40)),
    Task("miniworld_shapes_sketch", "sketch", tuple((s, None) for s in SHAPES), (32, 8, 40)),
    Task("miniworld_objects", "photo", _compounds(), (20, 4, 10)),
]}
SPLITS = ("train", "val", "test")


def task_images(task: Task, split: str) -> Iterator[Tuple[str, int, Image.Image]]:
    """(relative path, label, image) of every image of `split`, in split-file order."""
    n = task.per_class[SPLITS.index(split)]
    for label, (shape, colour) in enumerate(task.classes):
        for k in range(n):
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
            rows = []
            for rel, label, image in task_images(task, s):
                image.save(tmp / "images" / rel)
                rows.append([rel, label, names[label]])
            split[s] = rows
        text = json.dumps(split, indent=0)
        (tmp / f"split_{task.name}.json").write_text(text, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def make_data(root, tasks: Sequence[str] = (), force: bool = False) -> Path:
    """Generate the benchmark folders under `root` (all tasks by default); existing complete
    folders of the current version are kept unless `force`."""
    root = Path(root).expanduser()
    for name in tasks or TASKS:
        if name not in TASKS:
            raise DatasetError(f"unknown mini-world task {name!r}; tasks: {', '.join(TASKS)}")
        folder = root / name
        if not force and _is_current(folder, name):
            log.info("%s is up to date", folder)
            continue
        make_task(TASKS[name], folder)
        log.info("wrote %s (%s images per class in train/val/test)", folder,
                 "/".join(map(str, TASKS[name].per_class)))
    return root


def _is_current(folder: Path, name: str) -> bool:
    path = folder / f"split_{name}.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("meta", {})
    except (OSError, ValueError):
        return False
    return meta.get("version") == FORMAT_VERSION


# ----------------------------------------------------------------------------- readers
class MiniWorldDataset(DatasetReader):
    """A mini-world task folder written by `make_data`."""
    template = "a photo of a {}."

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
        check_files_exist((d.path for k in SPLITS for d in data[k]), f"split file {path}",
                          self.layout)
        info = {"file": str(path), "sha256": sha256_file(path), "matches_published": None,
                "note": "mini-world benchmark generated by dcp.miniworld"}
        return DatasetSplits(self.name, data["train"], data["val"], data["test"], classnames,
                             self.template, info, str(dataset_dir), str(image_dir))


for _name in TASKS:
    DATASETS.register(_name)(MiniWorldDataset)
