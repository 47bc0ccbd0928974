"""Few-shot draws (reproducible to the file), the released code's pkl cache, base/novel."""
import json
import logging
import os
import pickle
import random
import sys
import types
from pathlib import Path

import pytest

import datafixtures as F
from dcp.data import (DatasetError, DatasetSplits, build_dataset, fewshot, load_fewshot, save_fewshot,
                      subsample_classes)
from dcp.data.fewshot import DasslUnpickler, read_dassl_fewshot


def _names(data):
    return [os.path.basename(d.path) for d in data]


@pytest.fixture
def pets(tmp_path):
    """oxford_pets with 5 classes x 20 train, 6 val images."""
    ddir = tmp_path / "oxford_pets"
    breeds = ["Abyssinian", "Bengal", "beagle", "boxer", "pug"]
    rows = {"train": [], "val": [], "test": []}
    for label, b in enumerate(breeds):
        for split, n, start in (("train", 20, 0), ("val", 6, 100), ("test", 2, 200)):
            rows[split] += [[f"{b}_{start + i}.jpg", label, b.lower()] for i in range(n)]
    F.touch_images(ddir / "images" / r[0] for k in rows for r in rows[k])
    (ddir / "split_zhou_OxfordPets.json").write_text(json.dumps(rows))
    return tmp_path


def test_draw_counts_and_determinism(pets):
    ds = build_dataset("oxford_pets", str(pets))
    a = fewshot(ds, 4, seed=1)
    assert len(a.train) == 20 and len(a.val) == 20      # 4 per class; val min(4, 4)
    assert all(sum(d.label == c for d in a.train) == 4 for c in range(5))
    assert set(a.train) <= set(ds.train) and set(a.val) <= set(ds.val)
    assert a.test == ds.test and a.classnames == ds.classnames
    assert a.fewshot_info == {"shots": 4, "seed": 1, "mode": "per_class", "source": "drawn",
                              "record": None}
    random.seed(12345)                                  # global RNG state is irrelevant
    b = fewshot(build_dataset("oxford_pets", str(pets)), 4, seed=1)
    assert a.train == b.train and a.val == b.val
    c = fewshot(ds, 4, seed=2)
    assert set(c.train) != set(a.train)
    assert fewshot(ds, 2, seed=1).val == [d for d in fewshot(ds, 2, seed=1).val]
    assert len(fewshot(ds, 16, seed=1).val) == 20       # min(16, 4) per class
    assert len(fewshot(ds, 1, seed=1).val) == 5


def test_draw_pinned_files(pets):
    """The exact files of seed 1 (pins the documented per-class generator)."""
    ds = build_dataset("oxford_pets", str(pets))
    want = []
    for label in range(5):
        items = sorted((d for d in ds.train if d.label == label), key=lambda d: d.path)
        random.Random(f"dcp-fewshot:1:train:{items[0].classname}").shuffle(items)
        want += items[:2]
    assert fewshot(ds, 2, seed=1).train == want


def test_draw_independent_of_order_and_nested(pets):
    ds = build_dataset("oxford_pets", str(pets))
    shuffled = ds.__class__(**{**ds.__dict__, "train": list(reversed(ds.train))})
    assert fewshot(shuffled, 8, 3).train == fewshot(ds, 8, 3).train
    first = fewshot(ds, 8, 3).train                      # call order: another draw in between
    fewshot(ds, 2, 7)
    assert fewshot(ds, 8, 3).train == first
    k2, k8 = fewshot(ds, 2, 3).train, fewshot(ds, 8, 3).train
    assert set(k2) < set(k8)                              # a K-shot draw contains smaller K


@pytest.mark.parametrize("mode", ["per_class", "dassl"])
def test_small_class_is_an_error(pets, mode):
    ds = build_dataset("oxford_pets", str(pets))
    with pytest.raises(DatasetError, match="class 'abyssinian' has only 20 train image.s., fewer "
                                           "than shots=32: choose data.shots <= 20"):
        fewshot(ds, 32, 1, mode=mode)
    assert len(fewshot(ds, 8, 1, mode=mode).val) == 5 * 4      # val: min(K, 4) of 6


# --------------------------------------------------------------------------- Dassl's draw
def dassl_reference(train, val, shots, seed):
    """Dassl's algorithm, written out from its description: `random.seed(seed)`, then per data
    source (train with K, val with min(K, 4)) group items by label in order of first
    appearance and `random.sample(items, K)` per group (a smaller group: `random.choices(items,
    k=K)`, Dassl's default `repeat=True`)."""
    random.seed(seed)
    out = []
    for source, k in ((train, shots), (val, min(shots, 4))):
        groups = {}
        for item in source:
            groups.setdefault(item.label, []).append(item)
        picked = []
        for items in groups.values():
            picked.extend(random.sample(items, k) if len(items) >= k else random.choices(items, k=k))
        out.append(picked)
    return out


SPLITS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "coop-splits"


@pytest.mark.skipif(not SPLITS.is_dir(), reason=f"{SPLITS} is absent (no ../shared/assets)")
@pytest.mark.parametrize("name", ["Caltech101", "DescribableTextures", "EuroSAT", "OxfordFlowers",
                                  "OxfordPets", "StanfordCars", "UCF101"])
def test_dassl_draw_matches_the_released_algorithm_on_the_real_splits(name):
    from dcp.data import Datum
    from dcp.data.fewshot import draw_dassl
    doc = json.loads((SPLITS / f"split_zhou_{name}.json").read_text())
    train, val = ([Datum(p, label, c) for p, label, c in doc[s]] for s in ("train", "val"))
    for shots in (1, 2, 4, 8, 16):
        for seed in (1, 2, 3):
            random.seed(999)                              # our draw ignores the global RNG
            rng = random.Random(seed)
            got = (draw_dassl(train, shots, rng, "train", name),
                   draw_dassl(val, min(shots, 4), rng, "val", name))
            want = dassl_reference(train, val, shots, seed)
            assert list(got) == want, (name, shots, seed)


def test_dassl_draw_repeats_a_small_val_class_like_dassl():
    """A val class with fewer than min(K, 4) images: Dassl's default `repeat=True` draws it with
    replacement (`random.choices`), which also moves the stream for the classes after it."""
    from dcp.data import Datum
    from dcp.data.fewshot import draw_dassl
    train = [Datum(f"t{c}_{i}.jpg", c, f"c{c}") for c in range(3) for i in range(6)]
    val = [Datum(f"v{c}_{i}.jpg", c, f"c{c}") for c, n in ((0, 2), (1, 6), (2, 5)) for i in range(n)]
    rng = random.Random(7)
    got = draw_dassl(train, 4, rng, "train", "x"), draw_dassl(val, 4, rng, "val", "x")
    assert list(got) == dassl_reference(train, val, 4, 7)
    small = [d for d in got[1] if d.label == 0]
    assert len(small) == 4 and len(set(small)) <= 2                # repeated images


def test_dassl_draw_end_to_end_with_base_classes_and_record(pets, tmp_path):
    ds = build_dataset("oxford_pets", str(pets))
    assert ds.fewshot_draw == "dassl"                     # the benchmarks' default
    train, val = dassl_reference(ds.train, ds.val, 4, 2)
    full = fewshot(ds, 4, 2, mode="dassl")
    assert full.train == train and full.val == val and full.fewshot_info["mode"] == "dassl"
    base = fewshot(ds, 4, 2, record=tmp_path / "fewshot.json", mode="dassl", subsample="base")
    assert base.classnames == ds.classnames[:3] and base.subsample == "base"
    assert base.train == [d for d in train if d.label < 3]    # drawn on all classes, then cut
    assert json.loads((tmp_path / "fewshot.json").read_text())["mode"] == "dassl"
    assert fewshot(ds, 4, 2, record=tmp_path / "fewshot.json", mode="dassl", subsample="base").train == base.train
    with pytest.raises(DatasetError, match="'mode': 'per_class'"):   # the record is of another mode
        fewshot(ds, 4, 2, record=tmp_path / "fewshot.json", mode="per_class", subsample="base")
    with pytest.raises(DatasetError, match="made on all classes"):
        fewshot(subsample_classes(ds, "base"), 4, 2, mode="dassl")


def test_tampered_record_pointing_outside_the_dataset_is_refused(pets, tmp_path):
    ds = build_dataset("oxford_pets", str(pets))
    fewshot(ds, 2, 1, record=tmp_path / "fewshot.json")
    rec = tmp_path / "fewshot.json"
    doc = json.loads(rec.read_text())
    (tmp_path / "secret.jpg").write_bytes(b"x")
    for evil, refused in (("../../secret.jpg", "outside the image folder"),
                          (str(tmp_path / "secret.jpg"), "secret.jpg .* is not a train image of "
                                                         "oxford_pets")):
        doc["train"][0][0] = evil
        rec.write_text(json.dumps(doc))
        with pytest.raises(DatasetError, match=refused):
            fewshot(ds, 2, 1, record=tmp_path / "fewshot.json")


def test_a_record_is_read_back_through_symlinked_folders_and_absolute_paths(pets, tmp_path):
    """CoOp's DATASETS.md suggests symlinking image folders (e.g. ImageNet's images/train):
    a record is checked by name and by membership of the split, not by resolved location; an
    image outside the image folder (a CSV's absolute path) is recorded absolute and read back."""
    import shutil
    linked = tmp_path / "linked"
    shutil.copytree(pets, linked, ignore=shutil.ignore_patterns("images"))
    (linked / "oxford_pets" / "images").mkdir()
    real = tmp_path / "real_images"
    shutil.copytree(pets / "oxford_pets" / "images", real)
    for sub in sorted(real.iterdir()):                       # every image reached through a link
        (linked / "oxford_pets" / "images" / sub.name).symlink_to(sub)
    ds = build_dataset("oxford_pets", str(linked))
    a = fewshot(ds, 2, 1, record=tmp_path / "a.json")
    assert fewshot(ds, 2, 1, record=tmp_path / "a.json").train == a.train

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    rows = {s: [] for s in ("train", "test")}
    for s, paths in rows.items():
        for c in range(2):
            for i in range(3):
                shutil.copy(a.train[0].path, outside / f"{s}{c}{i}.jpg")
                paths.append(f"{outside / f'{s}{c}{i}.jpg'},{c},class{c}")
        (tmp_path / "csvdata").mkdir(exist_ok=True)
        (tmp_path / "csvdata" / f"{s}.csv").write_text("\n".join(paths) + "\n")
    ds = build_dataset("csv", str(tmp_path / "csvdata"))
    b = fewshot(ds, 2, 1, record=tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["train"][0][0].startswith(str(outside))
    assert fewshot(ds, 2, 1, record=tmp_path / "b.json").train == b.train


def test_record_save_load_and_repeat(pets, tmp_path):
    ds = build_dataset("oxford_pets", str(pets))
    run = tmp_path / "run"
    a = fewshot(ds, 4, 1, record=run / "fewshot.json")
    rec = run / "fewshot.json"
    doc = json.loads(rec.read_text())                    # readable JSON, paths relative to images/
    assert doc["shots"] == 4 and doc["seed"] == 1 and doc["dataset"] == "oxford_pets"
    assert doc["train"][0] == [os.path.basename(a.train[0].path), a.train[0].label,
                               a.train[0].classname]
    loaded = load_fewshot(rec)
    assert loaded["train"] == a.train and loaded["val"] == a.val
    # a run folder that holds a record repeats it, even if it was drawn differently
    doc["train"] = doc["train"][1:]
    rec.write_text(json.dumps(doc))
    again = fewshot(ds, 4, 1, record=run / "fewshot.json")
    assert again.train == a.train[1:] and "record" in again.fewshot_info["source"]
    with pytest.raises(DatasetError) as e:               # another config in the same run folder
        fewshot(ds, 8, 1, record=run / "fewshot.json")
    assert str(rec) in str(e.value)
    save_fewshot(a, tmp_path / "copy.json")
    assert load_fewshot(tmp_path / "copy.json")["train"] == a.train
    os.unlink(a.train[0].path)
    with pytest.raises(DatasetError) as e:
        load_fewshot(tmp_path / "copy.json")
    assert a.train[0].path in str(e.value)


def test_fewshot_on_eval_only_dataset_is_an_error():
    empty = DatasetSplits("imagenet_a", [], [], [], ["a"], "a photo of a {}.", {})
    with pytest.raises(DatasetError, match="no training images"):
        fewshot(empty, 4, 1)
    assert fewshot(empty, 0, 1) is empty                 # shots <= 0: all images


# --------------------------------------------------------------------------- released-code cache
@pytest.fixture
def fake_dassl(monkeypatch):
    """A class at module path dassl.data.datasets.base_dataset.Datum, as the released code has."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    mods = {n: types.ModuleType(n) for n in names}

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__ = "dassl.data.datasets.base_dataset"
    Datum.__qualname__ = "Datum"
    mods["dassl.data.datasets.base_dataset"].Datum = Datum
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return Datum


def _write_pkl(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))


def _as_dassl(Datum, items, old_root="/home/someone/DATA"):
    """Dassl Datums of `items` with the absolute paths of another machine."""
    out = []
    for d in items:
        rel = d.path.split("oxford_pets" + os.sep, 1)[1]
        out.append(Datum(f"{old_root}/oxford_pets/{rel}", d.label, 0, d.classname))
    return out


def test_cached_pkl_is_used_and_remapped(pets, fake_dassl):
    ds = build_dataset("oxford_pets", str(pets))
    chosen_train = [d for d in ds.train if d.path.endswith(("_7.jpg", "_13.jpg"))]
    chosen_val = [d for d in ds.val if d.path.endswith("_101.jpg")]
    _write_pkl(pets / "oxford_pets/split_fewshot/shot_2-seed_1.pkl",
               {"train": _as_dassl(fake_dassl, chosen_train), "val": _as_dassl(fake_dassl, chosen_val)})
    out = fewshot(ds, 2, 1, mode="dassl")
    assert out.train == chosen_train and out.val == chosen_val
    assert "released-code cache" in out.fewshot_info["source"]
    assert all(d.path.startswith(str(pets)) for d in out.train)
    assert fewshot(ds, 2, 1, mode="per_class").fewshot_info["source"] == "drawn"   # Dassl's only
    assert fewshot(ds, 2, 2, mode="dassl").fewshot_info["source"] == "drawn"       # other seed: no cache
    no_cache = build_dataset("oxford_pets", str(pets), fewshot_cache=False)
    assert fewshot(no_cache, 2, 1, mode="dassl").train != chosen_train
    # base/new subsampling keeps the cached draw's classes of that half, relabelled
    new = fewshot(ds, 2, 1, mode="dassl", subsample="new")
    assert [(d.label, d.classname) for d in new.train] == [(0, "boxer"), (0, "boxer"), (1, "pug"), (1, "pug")]
    assert _names(new.train) == ["boxer_7.jpg", "boxer_13.jpg", "pug_7.jpg", "pug_13.jpg"]


def test_cached_pkl_train_only_and_windows_paths(pets, fake_dassl):
    ds = build_dataset("oxford_pets", str(pets))
    chosen = ds.train[:1] + ds.train[20:21]
    dassl = [fake_dassl("C:\\data\\oxford_pets\\images\\" + os.path.basename(d.path), d.label, 0,
                        d.classname) for d in chosen]
    _write_pkl(pets / "oxford_pets/split_fewshot/shot_1-seed_5.pkl", {"train": dassl})
    out = fewshot(ds, 1, 5, mode="dassl")
    assert out.train == chosen and len(out.val) == 5     # val drawn here (ImageNet-style cache)


def test_cached_pkl_from_another_split_is_an_error(pets, fake_dassl):
    ds = build_dataset("oxford_pets", str(pets))
    bad = [fake_dassl("/x/oxford_pets/images/Sphynx_1.jpg", 0, 0, "abyssinian")]
    pkl = pets / "oxford_pets/split_fewshot/shot_1-seed_1.pkl"
    _write_pkl(pkl, {"train": bad, "val": []})
    with pytest.raises(DatasetError) as e:
        fewshot(ds, 1, 1, mode="dassl")
    assert str(pkl) in str(e.value) and "Sphynx_1.jpg" in str(e.value)
    wrong_label = [fake_dassl("/x/oxford_pets/images/Bengal_3.jpg", 0, 0, "abyssinian")]
    _write_pkl(pkl, {"train": wrong_label, "val": []})
    with pytest.raises(DatasetError, match="has label 0"):
        fewshot(ds, 1, 1, mode="dassl")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(pets, tmp_path):
    marker = tmp_path / "pwned"
    pkl = pets / "oxford_pets/split_fewshot/shot_1-seed_1.pkl"
    _write_pkl(pkl, {"train": [_Evil(marker)], "val": []})
    ds = build_dataset("oxford_pets", str(pets))
    with pytest.raises(DatasetError) as e:
        fewshot(ds, 1, 1, mode="dassl")
    assert "refusing to load global" in str(e.value) and str(pkl) in str(e.value)
    assert not marker.exists()
    for payload in ({"train": [eval], "val": []}, {"train": [Path("/")], "val": []}):
        _write_pkl(pkl, payload)
        with pytest.raises(DatasetError, match="refusing"):
            read_dassl_fewshot(pkl)
    assert DasslUnpickler is not pickle.Unpickler


def test_dassl_datum_state_is_checked(pets, fake_dassl):
    pkl = pets / "x.pkl"
    d = fake_dassl("/a/b.jpg", 0, 0, "c")
    d._label = "zero"
    _write_pkl(pkl, {"train": [d]})
    with pytest.raises(DatasetError, match="_label must be int"):
        read_dassl_fewshot(pkl)
    d2 = fake_dassl("/a/b.jpg", 0, 0, "c")
    d2.extra = 1
    _write_pkl(pkl, {"train": [d2]})
    with pytest.raises(DatasetError, match="unexpected Datum state"):
        read_dassl_fewshot(pkl)


# --------------------------------------------------------------------------- base / novel
def test_base_novel(pets):
    ds = build_dataset("oxford_pets", str(pets))
    base, new = subsample_classes(ds, "base"), subsample_classes(ds, "new")
    assert subsample_classes(ds, "all") is ds
    assert base.classnames == ["abyssinian", "bengal", "beagle"]     # ceil(5 / 2) = 3
    assert new.classnames == ["boxer", "pug"]
    for part, lo in ((base, 0), (new, 3)):
        for split in ("train", "val", "test"):
            full = [d for d in getattr(ds, split) if lo <= d.label < lo + part.num_classes]
            got = getattr(part, split)
            assert [d.path for d in got] == [d.path for d in full]
            assert [d.label for d in got] == [d.label - lo for d in full]
            assert all(part.classnames[d.label] == d.classname for d in got)
    # the few-shot draw is the same files whether taken before or after subsampling
    assert fewshot(new, 4, 1).train == subsample_classes(fewshot(ds, 4, 1), "new").train
    with pytest.raises(DatasetError, match="subsample"):
        subsample_classes(ds, "novel")


def test_base_novel_imagenet_a_indices(tmp_path):
    F.make_imagenet_family(tmp_path, parts=("imagenet-adversarial",))
    ds = build_dataset("imagenet_a", str(tmp_path))
    new = subsample_classes(ds, "new")
    assert new.num_classes == 100 and new.imagenet_indices == F.A_IDX[100:]
    assert all(F.NAMES[new.imagenet_indices[d.label]] == d.classname for d in new.test)
