"""Few-shot draws, their JSON record (a run folder's `fewshot.json`), the released code's cached
draws and the base/novel class split (docs/methods.md, "Few-shot draws")."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import random
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

from dcp.utils import atomic_write_text

from .splits import DatasetError, DatasetSplits, Datum, check_files_exist, json_rows_text

log = logging.getLogger(__name__)

FORMAT = "dcp-fewshot-1"
MODES = ("dassl", "per_class")


# --------------------------------------------------------------------------- cached Dassl draws
class CachedDatum:
    """Harmless stand-in for Dassl's `Datum` while unpickling: four checked fields, no code."""
    __slots__ = ("impath", "label", "domain", "classname")
    _fields = {"_impath": str, "_label": int, "_domain": int, "_classname": str}

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict) or set(state) != set(self._fields):
            raise pickle.UnpicklingError(f"unexpected Datum state {state!r}")
        for key, tp in self._fields.items():
            if not isinstance(state[key], tp) or isinstance(state[key], bool):
                raise pickle.UnpicklingError(f"Datum.{key} must be {tp.__name__}, got {state[key]!r}")
            setattr(self, key[1:], state[key])


class DasslUnpickler(pickle.Unpickler):
    """Allows exactly `dassl.data.datasets.base_dataset.Datum` (as `CachedDatum`)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("dassl.data.datasets.base_dataset", "Datum"):
            return CachedDatum
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_dassl_fewshot(path: Path) -> Dict[str, List[CachedDatum]]:
    """`{"train": [...], "val": [...]}` (val may be absent: ImageNet) from a released-code pkl."""
    try:
        with open(path, "rb") as f:
            data = DasslUnpickler(f).load()
    except Exception as e:   # any failure of an untrusted file becomes one clear error
        raise DatasetError(f"cannot read few-shot cache {path}: {e} (expected a pickle of "
                           "{'train': [Datum...], 'val': [Datum...]} written by CoOp/Dassl)") from e
    ok = isinstance(data, dict) and "train" in data and set(data) <= {"train", "val"} and all(
        isinstance(v, list) and all(isinstance(d, CachedDatum) for d in v) for v in data.values())
    if not ok:
        raise DatasetError(f"few-shot cache {path}: expected {{'train': [Datum...], 'val': "
                           f"[Datum...]}}, got {type(data).__name__}")
    return data


def _from_cache(splits: DatasetSplits, shots: int, seed: int):
    """(draw, pkl path) from the dataset folder's `split_fewshot/shot_K-seed_S.pkl`, or ({}, None).

    A cached absolute path becomes the Datum of `splits` with the longest matching path suffix;
    cached labels are in the full class list, so classes outside a base/new subset are dropped.
    """
    if not (splits.fewshot_cache and splits.dataset_dir):
        return {}, None
    path = Path(splits.dataset_dir) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    if not path.is_file():
        return {}, None
    cached = read_dassl_fewshot(path)
    out: Dict[str, List[Datum]] = {}
    for split in ("train", "val"):
        if split not in cached:
            continue
        known = {os.path.relpath(d.path, splits.image_dir).replace(os.sep, "/"): d
                 for d in getattr(splits, split)}
        out[split] = []
        for c in cached[split]:
            if not 0 <= c.label - splits.label_offset < splits.num_classes:
                continue
            parts = [p for p in re.split(r"[\\/]+", c.impath) if p]
            datum = next((known[r] for r in ("/".join(parts[i:]) for i in range(len(parts)))
                          if r in known), None)
            if datum is None:
                raise DatasetError(f"few-shot cache {path}: {c.impath} is not an image of the {split} "
                                   f"split under {splits.image_dir}; the cache was drawn from another "
                                   "split: delete it or build the dataset with fewshot_cache=False")
            if datum.label + splits.label_offset != c.label or datum.classname != c.classname:
                raise DatasetError(f"few-shot cache {path}: {c.impath} has label {c.label} "
                                   f"({c.classname!r}) but the split says "
                                   f"{datum.label + splits.label_offset} ({datum.classname!r})")
            out[split].append(datum)
    check_files_exist((d.path for v in out.values() for d in v), f"few-shot cache {path}",
                      "the images of the dataset's split")
    log.info("%s: using the released code's few-shot draw %s (%s)", splits.name, path,
             ", ".join(f"{k}: {len(v)}" for k, v in out.items()))
    return out, path


# --------------------------------------------------------------------------- drawing
def _by_class(data: Sequence[Datum], k: int, split: str, name: str) -> Dict[int, List[Datum]]:
    """Items per label, labels in order of first appearance, items in list order; a train class
    with fewer than `k` items is an error."""
    by_class: Dict[int, List[Datum]] = defaultdict(list)
    for d in data:
        by_class[d.label].append(d)
    small = [items for items in by_class.values() if len(items) < k]
    if small and split == "train":
        raise DatasetError(f"{name}: class {small[0][0].classname!r} has only {len(small[0])} "
                           f"{split} image(s), fewer than shots={k}: choose data.shots <= "
                           f"{len(small[0])} or fix the split")
    return by_class


def draw_dassl(data: Sequence[Datum], k: int, rng: random.Random, split: str,
               name: str) -> List[Datum]:
    """Dassl's draw: `rng.sample(items, k)` per class; a smaller (val) class is drawn with
    replacement, `rng.choices(items, k=k)`, as Dassl's `repeat=True` does."""
    out: List[Datum] = []
    for items in _by_class(data, k, split, name).values():
        out += rng.sample(items, k) if len(items) >= k else rng.choices(items, k=k)
    return out


def draw_per_class(data: Sequence[Datum], k: int, seed: int, split: str, name: str) -> List[Datum]:
    """Per class, its items sorted by path and shuffled by their own generator: the first `k`."""
    out: List[Datum] = []
    for _, items in sorted(_by_class(data, k, split, name).items()):
        items = sorted(items, key=lambda d: d.path)
        random.Random(f"dcp-fewshot:{seed}:{split}:{items[0].classname}").shuffle(items)
        out += items[:k]
    return out


def _draw(splits: DatasetSplits, target: DatasetSplits, shots: int, seed: int, mode: str):
    """{"train": [...], "val": [...]} of `target` (= `splits` subsampled)."""
    if mode == "per_class":
        return {split: draw_per_class(getattr(target, split), k, seed, split, splits.name)
                for split, k in (("train", shots), ("val", min(shots, 4)))}
    rng = random.Random(seed)            # = random.seed(seed) in Dassl's train.py
    drawn = {split: draw_dassl(getattr(splits, split), k, rng, split, splits.name)
             for split, k in (("train", shots), ("val", min(shots, 4)))}
    drawn = subsample_classes(dataclasses.replace(splits, **drawn), target.subsample)
    return {"train": drawn.train, "val": drawn.val}


def fewshot(splits: DatasetSplits, shots: int, seed: int, record: Optional[Path] = None,
            mode: str = "per_class", subsample: str = "all") -> DatasetSplits:
    """`splits` with K=`shots` train and min(K, 4) val images per class (all for K <= 0), of the
    `subsample` classes (all | base | new). `mode`: dassl | per_class; dassl draws on all classes,
    so `splits` must hold them all. A draw recorded in the file `record` is repeated, else it
    is recorded there."""
    if mode not in MODES:
        raise DatasetError(f"few-shot draw must be one of {', '.join(MODES)}, got {mode!r}")
    target = subsample_classes(splits, subsample)
    if shots <= 0:
        log.info("%s: shots=%d: using every training image", splits.name, shots)
        return target
    if not splits.train:
        raise DatasetError(f"{splits.name} has no training images (an evaluation-only dataset): "
                           "few-shot training needs a dataset with a train split")
    if mode == "dassl" and splits.subsample != "all":
        raise DatasetError(f"the dassl draw is made on all classes of {splits.name}: pass the "
                           f"full splits and subsample={splits.subsample!r}")
    record = Path(record) if record else None
    if record is not None and record.is_file():
        rec = load_fewshot(record, image_dir=splits.image_dir)
        want = {"dataset": splits.name, "shots": shots, "seed": seed,
                "subsample": target.subsample, "mode": mode}
        got = {k: rec.get(k, "per_class" if k == "mode" else None) for k in want}
        if got != want or rec["classnames"] != target.classnames:
            raise DatasetError(f"{record} records the draw of {got} with {len(rec['classnames'])} "
                               f"classes, this run asks for {want} with {target.num_classes}: "
                               "use another run folder")
        for split in ("train", "val"):         # only images of this dataset's own split
            own = set(getattr(target, split))
            stray = next((d for d in rec[split] if d not in own), None)
            if stray is not None:
                raise DatasetError(f"{record}: {stray.path} ({stray.classname!r}) is not a {split} "
                                   f"image of {target.name}; the record belongs to another "
                                   "dataset or split: use another run folder")
        log.info("%s: repeating the few-shot draw recorded in %s", splits.name, record)
        draw, source = {"train": rec["train"], "val": rec["val"]}, f"record {record}"
    else:
        draw, pkl = _from_cache(target, shots, seed) if mode == "dassl" else ({}, None)
        source = f"released-code cache {pkl}" if pkl else "drawn"
        if "train" not in draw:
            draw = _draw(splits, target, shots, seed, mode)
        elif "val" not in draw:           # ImageNet's cache holds train only
            draw["val"] = draw_per_class(target.val, min(shots, 4), seed, "val", splits.name)
    out = dataclasses.replace(target, train=draw["train"], val=draw["val"],
                              fewshot_info={"shots": shots, "seed": seed, "mode": mode,
                                            "source": source,
                                            "record": str(record) if record else None})
    if record is not None and not record.is_file():
        save_fewshot(out, record)
    return out


# --------------------------------------------------------------------------- records
def save_fewshot(draw: DatasetSplits, path) -> None:
    """Write a few-shot `DatasetSplits` (from `fewshot`) as readable JSON, atomically; paths
    relative to the image folder (absolute when outside it)."""
    info = draw.fewshot_info or {}
    doc = {"format": FORMAT, "dataset": draw.name, "shots": info.get("shots"),
           "seed": info.get("seed"), "mode": info.get("mode"), "source": info.get("source"),
           "subsample": draw.subsample, "image_dir": draw.image_dir, "classnames": draw.classnames}
    lists = {}
    for split in ("train", "val"):
        lists[split] = []
        for d in getattr(draw, split):
            rel = os.path.relpath(d.path, draw.image_dir) if draw.image_dir else d.path
            rel = d.path if rel.startswith("..") else rel
            lists[split].append([Path(rel).as_posix(), d.label, d.classname])
    atomic_write_text(path, json_rows_text(doc, lists))
    log.info("few-shot draw recorded in %s", path)


def _read_record(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read few-shot record {path}: {e}") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: not a few-shot record ({FORMAT})")
    return doc


def recorded_info(path) -> Optional[dict]:
    """The `fewshot_info` (shots, seed, mode, source, record) of a record, or None if there is
    none."""
    path = Path(path)
    if not path.is_file():
        return None
    doc = _read_record(path)
    return {**{k: doc.get(k) for k in ("shots", "seed", "mode", "source")}, "record": str(path)}


def load_fewshot(path, image_dir: Optional[str] = None) -> dict:
    """A record of `save_fewshot`: its fields, `train`/`val` as lists of `Datum` with relative
    paths joined to `image_dir` (default: the recorded one; a relative path may not climb out of
    it, checked by name so that symlinked sub-folders work); every file must exist."""
    path = Path(path)
    doc = _read_record(path)
    need = ("dataset", "shots", "seed", "subsample", "image_dir", "classnames", "train", "val")
    if doc.get("format") != FORMAT or any(k not in doc for k in need):
        raise DatasetError(f"{path}: not a few-shot record ({FORMAT}) with keys {', '.join(need)}")
    base = image_dir or doc["image_dir"]
    if not (isinstance(base, str) and isinstance(doc["classnames"], list)):
        raise DatasetError(f"{path}: image_dir must be a path and classnames a list")
    n = len(doc["classnames"])
    for split in ("train", "val"):
        items = []
        for i, e in enumerate(doc[split] if isinstance(doc[split], list) else [doc[split]]):
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                    and isinstance(e[1], int) and 0 <= e[1] < n and doc["classnames"][e[1]] == e[2]):
                raise DatasetError(f"{path}, {split}[{i}]: expected [path, label in 0..{n - 1}, "
                                   f"its class name], got {str(e)[:200]}")
            full = os.path.join(base, e[0])     # an absolute path (outside image_dir) stays
            if ".." in PurePosixPath(e[0].replace("\\", "/")).parts:
                raise DatasetError(f"{path}, {split}[{i}]: {e[0][:200]!r} is outside the image "
                                   f"folder {base}; refusing a record that points elsewhere")
            items.append(Datum(full, e[1], e[2]))
        doc[split] = items
    check_files_exist((d.path for s in ("train", "val") for d in doc[s]), f"few-shot record {path}",
                      f"paths relative to {base}")
    return doc


# --------------------------------------------------------------------------- base / novel
def subsample_classes(splits: DatasetSplits, subsample: str) -> DatasetSplits:
    """Keep all classes, the base half (first ceil(C/2) labels) or the new half, relabelled from 0."""
    if subsample not in ("all", "base", "new"):
        raise DatasetError(f"subsample must be all, base or new, got {subsample!r}")
    if subsample == "all":
        return splits
    if splits.subsample != "all":
        raise DatasetError(f"{splits.name} is already subsampled to {splits.subsample!r} classes")
    m = math.ceil(splits.num_classes / 2)
    keep = range(0, m) if subsample == "base" else range(m, splits.num_classes)

    def pick(data: Sequence[Datum]) -> List[Datum]:
        return [Datum(d.path, d.label - keep.start, d.classname) for d in data if d.label in keep]

    indices = splits.imagenet_indices
    return dataclasses.replace(
        splits, train=pick(splits.train), val=pick(splits.val), test=pick(splits.test),
        classnames=splits.classnames[keep.start:keep.stop],
        imagenet_indices=indices[keep.start:keep.stop] if indices is not None else None,
        subsample=subsample, label_offset=splits.label_offset + keep.start)
