"""Dataset readers on miniature trees in every layout users have, and detect_dataset."""
import json
import os
import shutil
from pathlib import Path

import pytest

import datafixtures as F
from dcp.data import DatasetError, build_dataset, detect_dataset
from dcp.registry import DATASETS


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("inet")
    F.make_imagenet_family(root)
    return root


@pytest.mark.parametrize("name", sorted(F.SPLIT_SPECS))
def test_split_file_dataset(tmp_path, name, caplog):
    ddir, rows = F.make_split_dataset(tmp_path, name)
    folder, images, split_name, classes, _ = F.SPLIT_SPECS[name]
    ds = build_dataset(name, str(tmp_path))
    image_dir = ddir / images if images else ddir
    assert ds.name == name and ds.dataset_dir == str(ddir) and ds.image_dir == str(image_dir)
    assert ds.classnames == [c for c, _ in classes]          # raw names, split-file order
    assert ds.template == F.TEMPLATES.get(name, "a photo of a {}.")
    for split in ("train", "val", "test"):
        got = [(d.path, d.label, d.classname) for d in getattr(ds, split)]
        want = [(str(image_dir / r), lab, c) for r, lab, c in rows[split]]
        assert got == want
        assert all(os.path.isabs(d.path) and os.path.isfile(d.path) for d in getattr(ds, split))
    assert ds.split_info["file"] == str(ddir / f"split_zhou_{split_name}.json")
    # a miniature split is not the published file: flagged where the checksum is known
    assert ds.split_info["matches_published"] is (None if name in ("food101", "sun397") else False)
    # the dataset's own folder works as root too, and the data folder is left untouched
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    again = build_dataset(name, str(ddir))
    assert again.train == ds.train
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_registry_has_every_dataset():
    want = set(F.SPLIT_SPECS) | {"fgvc_aircraft", "imagenet", "imagenetv2", "imagenet_sketch",
                                 "imagenet_a", "imagenet_r", "folder", "csv"}
    assert want <= set(DATASETS.names())


def test_fgvc_aircraft(tmp_path):
    items = F.make_fgvc(tmp_path)
    ds = build_dataset("fgvc_aircraft", str(tmp_path))
    assert ds.classnames == F.FGVC_VARIANTS              # variants.txt order, spaces and '/' kept
    assert ds.template == "a photo of a {}, a type of aircraft."
    for split in ("train", "val", "test"):
        got = [(d.path, d.label, d.classname) for d in getattr(ds, split)]
        want = [(str(tmp_path / "fgvc_aircraft" / "images" / f"{i}.jpg"), F.FGVC_VARIANTS.index(v), v)
                for i, v in items[split]]
        assert got == want


def test_imagenet(imagenet_root):
    ds = build_dataset("imagenet", str(imagenet_root))
    assert ds.classnames == F.NAMES and len(ds.train) == 1003 and len(ds.test) == 1000
    assert ds.val == ds.test                             # CoOp: val set = test set
    d = ds.train[0]
    assert d.path == str(imagenet_root / "imagenet/images/train" / F.WNIDS[0] / f"{F.WNIDS[0]}_0.JPEG")
    assert (d.label, d.classname) == (0, F.NAMES[0])
    t = ds.test[577]
    assert Path(t.path).parent.name == F.WNIDS[577] and t.label == 577 and t.classname == F.NAMES[577]
    assert ds.imagenet_indices is None and ds.template == "a photo of a {}."


def test_imagenetv2_and_sketch(imagenet_root):
    v2 = build_dataset("imagenetv2", str(imagenet_root))
    assert v2.train == [] and v2.val == [] and len(v2.test) == 1000 and v2.classnames == F.NAMES
    for d in v2.test[::97]:
        assert Path(d.path).parent.name == str(d.label) and d.classname == F.NAMES[d.label]
    # imagenet-sketch has no classnames.txt of its own: imagenet/classnames.txt is used
    sk = build_dataset("imagenet_sketch", str(imagenet_root))
    assert len(sk.test) == 1000 and sk.classnames == F.NAMES
    assert all(Path(d.path).parent.name == F.WNIDS[d.label] for d in sk.test)


@pytest.mark.parametrize("name,folder,idx", [("imagenet_a", "imagenet-adversarial/imagenet-a", F.A_IDX),
                                              ("imagenet_r", "imagenet-rendition/imagenet-r", F.R_IDX)])
def test_imagenet_a_r_map_to_1000_classes(imagenet_root, name, folder, idx):
    ds = build_dataset(name, str(imagenet_root))
    assert ds.num_classes == 200 and len(ds.test) == 200 and ds.train == []
    assert ds.imagenet_indices == idx                    # label -> ImageNet label
    assert ds.classnames == [F.NAMES[i] for i in idx]
    for d in ds.test:                                    # labels 0..199, sorted-wnid order
        assert Path(d.path).parent == imagenet_root / folder / F.WNIDS[idx[d.label]]
        assert F.NAMES[ds.imagenet_indices[d.label]] == d.classname


def test_folder_reader_tree(tmp_path):
    F.make_class_folders(tmp_path / "train", {"cat": 3, "dog": 2})
    F.make_class_folders(tmp_path / "validation", {"cat": 1, "dog": 1})
    F.make_class_folders(tmp_path / "test", {"dog": 2})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = build_dataset("folder", str(tmp_path))
    assert ds.classnames == ["cat", "dog"] and ds.template == "a photo of a {}."
    assert [(Path(d.path).relative_to(tmp_path).as_posix(), d.label) for d in ds.train] == [
        ("train/cat/img_000.jpg", 0), ("train/cat/img_001.jpg", 0), ("train/cat/img_002.jpg", 0),
        ("train/dog/img_000.jpg", 1), ("train/dog/img_001.jpg", 1)]
    assert len(ds.val) == 2 and [d.label for d in ds.test] == [1, 1]


def test_csv_reader(tmp_path):
    F.make_class_folders(tmp_path / "imgs", {"a": 3, "b": 3})
    absolute = tmp_path / "imgs" / "b" / "img_002.jpg"
    (tmp_path / "train.csv").write_text("path,label,classname\nimgs/a/img_000.jpg,0,red fox\n"
                                        "imgs/a/img_001.jpg,0,red fox\nimgs/b/img_000.jpg,1,snow_owl\n")
    (tmp_path / "test.csv").write_text(f"imgs/a/img_002.jpg,0,red fox\n{absolute},1,snow_owl\n")
    ds = build_dataset("csv", str(tmp_path))
    assert ds.classnames == ["red fox", "snow_owl"] and ds.val == []
    assert [(d.path, d.label) for d in ds.test] == [(str(tmp_path / "imgs/a/img_002.jpg"), 0),
                                                    (str(absolute), 1)]
    assert len(ds.train) == 3


# --------------------------------------------------------------------------- detect_dataset
def test_detect_by_folder_name_and_data_root(tmp_path, imagenet_root):
    ddir, _ = F.make_split_dataset(tmp_path / "one", "oxford_pets")
    assert detect_dataset(str(ddir)) == ("oxford_pets", str(tmp_path / "one"))
    assert detect_dataset(str(tmp_path / "one")) == ("oxford_pets", str(tmp_path / "one"))
    for name, folder in [("imagenet_a", "imagenet-adversarial"), ("imagenet_r", "imagenet-rendition"),
                         ("imagenet_sketch", "imagenet-sketch"), ("imagenetv2", "imagenetv2"),
                         ("imagenet", "imagenet")]:
        assert detect_dataset(str(imagenet_root / folder)) == (name, str(imagenet_root))
    with pytest.raises(DatasetError) as e:               # a root with several datasets
        detect_dataset(str(imagenet_root))
    assert str(imagenet_root) in str(e.value)
    assert "imagenet_a" in str(e.value) and "imagenet_sketch" in str(e.value)


def test_detect_by_layout(tmp_path):
    ddir, _ = F.make_split_dataset(tmp_path, "eurosat")
    renamed = tmp_path / "my_eurosat_copy"
    ddir.rename(renamed)
    assert detect_dataset(str(renamed)) == ("eurosat", str(renamed))
    ds = build_dataset("eurosat", str(renamed))         # a renamed dataset folder still reads
    assert ds.classnames[0] == "Annual Crop Land"
    F.make_class_folders(tmp_path / "mine" / "train", {"x": 1, "y": 1})
    F.make_class_folders(tmp_path / "mine" / "test", {"x": 1})
    assert detect_dataset(str(tmp_path / "mine")) == ("folder", str(tmp_path / "mine"))
    (tmp_path / "list.csv").write_text("a.jpg,0\n")
    assert detect_dataset(str(tmp_path / "list.csv")) == ("csv", str(tmp_path / "list.csv"))


def test_detect_ambiguous_and_unknown(tmp_path):
    amb = tmp_path / "stuff"
    for d in ("images", "annotations", "meta"):          # pets' and food-101's layouts at once
        (amb / d).mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        detect_dataset(str(amb))
    assert str(amb) in str(e.value) and "oxford_pets" in str(e.value) and "food101" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot recognise") as e:
        detect_dataset(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(e.value)
    with pytest.raises(DatasetError, match="not found") as e:
        detect_dataset(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value) and "data root holding dataset folders" in str(e.value)


# --------------------------------------------------------------------------- errors
def _err(name, root, **kw) -> str:
    with pytest.raises(DatasetError) as e:
        build_dataset(name, str(root), **kw)
    return str(e.value)


def test_error_missing_root_folder_images_split(tmp_path):
    msg = _err("dtd", tmp_path / "nowhere")
    assert "data root not found" in msg and str(tmp_path / "nowhere") in msg
    msg = _err("dtd", tmp_path)
    assert str(tmp_path / "dtd") in msg and "split_zhou_DescribableTextures.json" in msg
    ddir, _ = F.make_split_dataset(tmp_path, "dtd", with_split=False)
    msg = _err("dtd", tmp_path)                        # no split file: which file, where, or how
    assert str(ddir / "split_zhou_DescribableTextures.json") in msg
    assert "drive.google.com/file/d/1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x" in msg
    assert "python -m dcp.data.make_split dtd" in msg
    shutil.rmtree(ddir / "images")
    msg = _err("dtd", tmp_path)
    assert "image folder not found" in msg and str(ddir / "images") in msg
    F.make_split_dataset(tmp_path, "oxford_pets")
    msg = _err("oxford_pets", tmp_path, split_file=str(tmp_path / "gone.json"))
    assert "split file not found" in msg and str(tmp_path / "gone.json") in msg


def test_error_unknown_name(tmp_path):
    msg = _err("imagenet-x", tmp_path)
    assert "imagenet-x" in msg and "oxford_pets" in msg


def _write_split(ddir: Path, name: str, rows) -> Path:
    path = ddir / f"split_zhou_{F.SPLIT_SPECS[name][2]}.json"
    path.write_text(json.dumps(rows))
    return path


def test_error_bad_split_contents(tmp_path):
    ddir, rows = F.make_split_dataset(tmp_path, "oxford_pets")
    path = ddir / "split_zhou_OxfordPets.json"
    cases = [
        (dict(rows, train=[r if i else [r[0], 7, "beagle"] for i, r in enumerate(rows["train"])]),
         "label 7 out of range"),
        (dict(rows, test=rows["test"] + [["missing_1.jpg", 0, "abyssinian"]]), "do not exist"),
        (dict(rows, train=[r for r in rows["train"] if r[1] != 1]), "has no train image"),
        ({k: v for k, v in rows.items() if k != "val"}, "missing list 'val'"),
        (dict(rows, val=[["a.jpg", "0", "abyssinian"]]), "expected [relative_path"),
        (dict(rows, val=[["../../etc/passwd", 0, "abyssinian"]]), "stay inside"),
        (dict(rows, val=[[rows["val"][0][0], 0, "cat"]]), "is named 'cat' here"),
    ]
    for content, words in cases:
        path.write_text(json.dumps(content))
        msg = _err("oxford_pets", tmp_path)
        assert words in msg and str(path) in msg, msg
    path.write_text("{not json")
    msg = _err("oxford_pets", tmp_path)
    assert "cannot read JSON" in msg and str(path) in msg
    path.write_text(json.dumps(dict(rows, test=rows["test"] + [["missing_1.jpg", 0, "abyssinian"]])))
    assert str(ddir / "images" / "missing_1.jpg") in _err("oxford_pets", tmp_path)


def test_error_flowers_metadata_mismatch(tmp_path):
    ddir, _ = F.make_split_dataset(tmp_path, "oxford_flowers")
    meta = ddir / "cat_to_name.json"
    meta.write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid",
                                "3": "canterbury bells", "4": "sweet pea"}))
    msg = _err("oxford_flowers", tmp_path)
    assert "3 classes" in msg and str(meta) in msg
    meta.write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "rose"}))
    msg = _err("oxford_flowers", tmp_path)
    assert "'rose'" in msg and str(meta) in msg


def test_error_fgvc(tmp_path):
    F.make_fgvc(tmp_path)
    ddir = tmp_path / "fgvc_aircraft"
    with open(ddir / "images_variant_val.txt", "a") as f:
        f.write("9999999 Spitfire Mk IX\n")
    msg = _err("fgvc_aircraft", tmp_path)
    assert str(ddir / "images_variant_val.txt") + ":13" in msg and "Spitfire Mk IX" in msg
    F.make_fgvc(tmp_path / "b")
    (tmp_path / "b/fgvc_aircraft/images/1000000.jpg").unlink()
    assert str(tmp_path / "b/fgvc_aircraft/images/1000000.jpg") in _err("fgvc_aircraft", tmp_path / "b")
    (tmp_path / "b/fgvc_aircraft/variants.txt").unlink()
    assert str(tmp_path / "b/fgvc_aircraft/variants.txt") in _err("fgvc_aircraft", tmp_path / "b")


def test_error_imagenet_layouts(tmp_path):
    root = tmp_path / "r"
    F.make_imagenet_family(root, parts=("imagenet", "imagenetv2", "imagenet-adversarial",
                                        "imagenet-rendition"))
    # a class folder missing from train
    shutil.rmtree(root / "imagenet/images/train" / F.WNIDS[5])
    msg = _err("imagenet", root)
    assert str(root / "imagenet/images/train") in msg and F.WNIDS[5] in msg and "999 class folders" in msg
    # an empty class folder
    (root / "imagenet/images/train" / F.WNIDS[5]).mkdir()
    msg = _err("imagenet", root)
    assert "empty class folder" in msg and str(root / "imagenet/images/train" / F.WNIDS[5]) in msg
    # ImageNet-A must be the 200-class subset
    shutil.rmtree(root / "imagenet-adversarial/imagenet-a" / F.WNIDS[0])
    msg = _err("imagenet_a", root)
    assert "199 class folders" in msg and str(root / "imagenet-adversarial/imagenet-a") in msg
    (root / "imagenet-adversarial/imagenet-a/n99999999").mkdir()
    msg = _err("imagenet_a", root)
    assert str(root / "imagenet-adversarial/imagenet-a/n99999999") in msg
    # classnames.txt with a wrong count
    lines = (root / "imagenet-rendition/classnames.txt").read_text().splitlines()
    (root / "imagenet-rendition/classnames.txt").write_text("\n".join(lines[:999]) + "\n")
    msg = _err("imagenet_r", root)
    assert str(root / "imagenet-rendition/classnames.txt") in msg and "expected 1000" in msg
    # a variant without classnames.txt, and no imagenet/ to fall back on
    (root / "imagenetv2/classnames.txt").unlink()
    (root / "imagenet/classnames.txt").unlink()
    msg = _err("imagenetv2", root)
    assert str(root / "imagenetv2/classnames.txt") in msg and "drive.google.com" in msg
    # ImageNetV2 folders are label indices 0..999
    (root / "imagenetv2/classnames.txt").write_text(F.classnames_text())
    shutil.rmtree(root / "imagenetv2/imagenetv2-matched-frequency-format-val/999")
    msg = _err("imagenetv2", root)
    assert "['999']" in msg and str(root / "imagenetv2/imagenetv2-matched-frequency-format-val") in msg


def test_error_imagenet_val_not_sorted_into_folders(tmp_path):
    inet = tmp_path / "imagenet"
    (inet / "images" / "train").mkdir(parents=True)
    (inet / "classnames.txt").write_text(F.classnames_text())
    for w in F.WNIDS:
        F.touch_images([inet / "images/train" / w / "a.JPEG"])
    F.touch_images([inet / "images/val" / f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 4)])
    msg = _err("imagenet", tmp_path)
    assert str(inet / "images/val") in msg and "3 loose files" in msg


def test_error_user_data(tmp_path):
    F.make_class_folders(tmp_path / "flat", {"a": 2, "b": 2})
    msg = _err("folder", tmp_path / "flat")
    assert str(tmp_path / "flat") in msg and "python -m dcp.data.make_split folder" in msg
    F.make_class_folders(tmp_path / "t" / "train", {"a": 2, "b": 0})
    F.make_class_folders(tmp_path / "t" / "test", {"a": 1})
    (tmp_path / "t/train/b").mkdir(exist_ok=True)
    msg = _err("folder", tmp_path / "t")
    assert "empty class folder" in msg and str(tmp_path / "t/train/b") in msg
    F.make_class_folders(tmp_path / "u" / "train", {"a": 2})
    F.make_class_folders(tmp_path / "u" / "test", {"zebra": 1})
    msg = _err("folder", tmp_path / "u")
    assert str(tmp_path / "u/test/zebra") in msg
    (tmp_path / "c").mkdir()
    (tmp_path / "c/train.csv").write_text("x.jpg,0,a\ny.jpg,one,b\n")
    (tmp_path / "c/test.csv").write_text("x.jpg,0,a\n")
    msg = _err("csv", tmp_path / "c")
    assert str(tmp_path / "c/train.csv") + ":2" in msg
    (tmp_path / "c/train.csv").write_text("x.jpg,0,a\ny.jpg,2,b\n")
    F.touch_images([tmp_path / "c/x.jpg", tmp_path / "c/y.jpg"])
    msg = _err("csv", tmp_path / "c")
    assert "label 2 out of range" in msg and str(tmp_path / "c") in msg
