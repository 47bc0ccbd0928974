"""Split files: the manifest's checksums, flagging modified splits, make_split, real photos."""
import json
import logging
import shutil

import pytest
import torch

import datafixtures as F
import dcp.data.datasets
import dcp.data.make_split
import dcp.data.splits
from dcp.data import (DatasetError, batches, build_dataset, build_transform, eval_loader, fewshot,
                      train_loader)
from dcp.data.make_split import main as make_split_main
from dcp.data.splits import MANIFEST, load_manifest, sha256_file

COOP = F.ASSETS / "coop-splits"
needs_coop = pytest.mark.skipif(not COOP.is_dir(), reason=f"{COOP} is absent (no ../shared/assets)")


@pytest.fixture
def splits_dir(tmp_path, monkeypatch):
    """Point data_splits/ at a temporary folder so tests never write into the project."""
    d = tmp_path / "data_splits"
    d.mkdir()
    for mod in (dcp.data.splits, dcp.data.datasets, dcp.data.make_split):
        monkeypatch.setattr(mod, "SPLITS_DIR", d)
    return d


def test_manifest_is_readable_and_complete():
    doc = json.loads(MANIFEST.read_text())
    splits = doc["splits"]
    assert set(splits) == {"caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                           "sun397", "dtd", "eurosat", "ucf101"}
    for name, e in splits.items():
        assert e["file"].startswith("split_zhou_") and e["url"].startswith("https://drive.google.com/")
        assert e["sha256"] is None or len(e["sha256"]) == 64
    assert load_manifest() == splits


@needs_coop
def test_manifest_matches_published_files():
    files = sorted(COOP.glob("split_zhou_*.json"))
    assert len(files) == 7
    by_file = {e["file"]: e for e in load_manifest().values()}
    for f in files:
        assert sha256_file(f) == by_file[f.name]["sha256"], f
        raw = json.loads(f.read_text())
        assert {k: len(raw[k]) for k in ("train", "val", "test")} == by_file[f.name]["counts"]


@needs_coop
def test_published_split_matches_and_modified_split_is_flagged(tmp_path, caplog):
    """The real DTD split on a tree of empty image files: counts, names, checksum flag."""
    src = COOP / "split_zhou_DescribableTextures.json"
    raw = json.loads(src.read_text())
    ddir = tmp_path / "dtd"
    F.touch_images((ddir / "images" / r[0] for k in raw for r in raw[k]), b"")
    shutil.copy(src, ddir / src.name)
    ds = build_dataset("dtd", str(tmp_path))
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes) == (2820, 1128, 1692, 47)
    assert ds.classnames[:3] == ["banded", "blotchy", "braided"]
    assert ds.split_info == {"file": str(ddir / src.name), "sha256": load_manifest()["dtd"]["sha256"],
                             "matches_published": True, "note": ""}
    raw["test"] = raw["test"][1:]                         # one test image fewer
    (ddir / src.name).write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        ds = build_dataset("dtd", str(tmp_path))
    assert ds.split_info["matches_published"] is False and len(ds.test) == 1691
    assert "differs from the published one" in caplog.text and str(ddir / src.name) in caplog.text


@needs_coop
def test_real_flowers_split_agrees_with_cat_to_name(tmp_path):
    raw = json.loads((COOP / "split_zhou_OxfordFlowers.json").read_text())
    ddir = tmp_path / "oxford_flowers"
    F.touch_images((ddir / "jpg" / r[0] for k in raw for r in raw[k]), b"")
    shutil.copy(COOP / "split_zhou_OxfordFlowers.json", ddir)
    shutil.copy(COOP / "cat_to_name.json", ddir)
    ds = build_dataset("oxford_flowers", str(tmp_path))
    assert ds.num_classes == 102 and ds.split_info["matches_published"] is True
    cat = json.loads((COOP / "cat_to_name.json").read_text())
    assert ds.classnames == [cat[str(i + 1)] for i in range(102)]


def test_split_found_in_data_splits(tmp_path, splits_dir):
    ddir, rows = F.make_split_dataset(tmp_path, "ucf101", with_split=False)
    (splits_dir / "split_zhou_UCF101.json").write_text(json.dumps(rows))
    ds = build_dataset("ucf101", str(tmp_path))
    assert ds.split_info["file"] == str(splits_dir / "split_zhou_UCF101.json") and len(ds.test) == 9
    # the dataset folder's own file wins
    (ddir / "split_zhou_UCF101.json").write_text(json.dumps(rows))
    assert build_dataset("ucf101", str(tmp_path)).split_info["file"] == str(ddir / "split_zhou_UCF101.json")


# --------------------------------------------------------------------------- make_split
def test_make_split_help(capsys):
    with pytest.raises(SystemExit) as e:
        make_split_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m dcp.data.make_split" in out and "data_splits" in out


def test_make_split_standard_dataset(tmp_path, splits_dir, caplog):
    root = tmp_path / "data"
    img = root / "caltech-101" / "101_ObjectCategories"
    F.make_class_folders(img, {"BACKGROUND_Google": 10, "Faces": 10, "Faces_easy": 10,
                               "Leopards": 10, "accordion": 7, "airplanes": 10})
    before = sorted(p for p in root.rglob("*"))
    assert make_split_main(["caltech101", "--root", str(root), "--seed", "3"]) == 0
    out = splits_dir / "split_dcp_Caltech101.json"
    assert sorted(p for p in root.rglob("*")) == before   # the data folder is not touched
    with caplog.at_level(logging.WARNING):
        ds = build_dataset("caltech101", str(root))       # found in data_splits/
    assert ds.classnames == ["face", "leopard", "accordion", "airplane"]   # CoOp's renames, order
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5 * 3 + 4, 2 * 3 + 1, 3 * 3 + 2)
    assert ds.split_info["file"] == str(out) and ds.split_info["matches_published"] is False
    assert "generated" in ds.split_info["note"] and "not comparable" in caplog.text
    first = out.read_text()
    assert make_split_main(["caltech101", "--root", str(root), "--seed", "3"]) == 2   # no overwrite
    assert make_split_main(["caltech101", "--root", str(root), "--seed", "3", "--force"]) == 0
    assert out.read_text() == first                       # same seed, same file
    make_split_main(["caltech101", "--root", str(root), "--seed", "4", "--force"])
    assert out.read_text() != first


def test_make_split_user_folder_and_csv(tmp_path, splits_dir):
    mine = tmp_path / "my_photos"
    F.make_class_folders(mine, {"red_fox": 10, "owl": 10})
    assert make_split_main(["folder", "--root", str(mine)]) == 0
    ds = build_dataset("folder", str(mine))
    assert ds.classnames == ["owl", "red_fox"] and (len(ds.train), len(ds.val), len(ds.test)) == (10, 4, 6)
    assert ds.split_info["file"] == str(splits_dir / "split_dcp_my_photos.json")
    rows = "".join(f"{mine}/owl/img_{i:03d}.jpg,0,owl\n" for i in range(10))
    rows += "".join(f"my_photos/red_fox/img_{i:03d}.jpg,1,red fox\n" for i in range(10))
    (tmp_path / "list.csv").write_text("path,label,classname\n" + rows)
    with pytest.raises(DatasetError, match="make_split csv"):
        build_dataset("csv", str(tmp_path / "list.csv"))
    assert make_split_main(["csv", "--root", str(tmp_path / "list.csv")]) == 0
    ds = build_dataset("csv", str(tmp_path / "list.csv"))
    assert ds.classnames == ["owl", "red fox"] and len(ds.train) == 10
    assert all(d.path.startswith(str(mine)) for d in ds.train + ds.test)


def test_make_split_sun397_nested(tmp_path, splits_dir):
    img = tmp_path / "sun397" / "SUN397"
    F.make_class_folders(img, {"a/abbey": 4, "b/bakery/shop": 4, "a/apse/outdoor": 4})
    assert make_split_main(["sun397", "--root", str(tmp_path), "--p-train", "0.5", "--p-val", "0.25"]) == 0
    ds = build_dataset("sun397", str(tmp_path))
    assert ds.classnames == ["abbey", "outdoor apse", "shop bakery"]
    assert all(d.path.startswith(str(img / "b/bakery/shop")) for d in ds.test if d.label == 2)


def test_make_split_errors(tmp_path, splits_dir, caplog):
    F.make_class_folders(tmp_path / "mine", {"a": 10, "b": 2})
    assert make_split_main(["folder", "--root", str(tmp_path / "mine")]) == 2
    assert "class 'b'" in caplog.text and str(tmp_path / "mine") in caplog.text
    F.make_class_folders(tmp_path / "ok", {"a": 10, "b": 10})
    inside = tmp_path / "ok" / "split.json"
    assert make_split_main(["folder", "--root", str(tmp_path / "ok"), "--out", str(inside)]) == 2
    assert not inside.exists() and "refusing to write" in caplog.text
    with pytest.raises(DatasetError) as e:
        dcp.data.make_split.make_split("oxford_pets", str(tmp_path))
    assert "drive.google.com/file/d/1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs" in str(e.value)
    assert make_split_main(["dtd", "--root", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in caplog.text


# --------------------------------------------------------------------------- real photos
CLOTHING = F.ASSETS / "clothing-small"
DTD_SUBSET = F.ASSETS / "dtd-subset"


@pytest.mark.skipif(not CLOTHING.is_dir(), reason=f"{CLOTHING} is absent (no ../shared/assets)")
def test_real_photos_clothing_small(tmp_path):
    ds = build_dataset("folder", str(CLOTHING))
    assert ds.classnames == ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes",
                             "shorts", "skirt", "t-shirt"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (320, 120, 372)
    assert sum(d.label == 2 for d in ds.test) == 72      # longsleeve: 72 test photos
    few = fewshot(ds, 2, seed=1, record=tmp_path / "fewshot.json")
    assert len(few.train) == 20 and (tmp_path / "fewshot.json").is_file()
    loader = train_loader(few.train, build_transform(True, 64), 8, seed=1)
    images, labels, idx = next(batches(loader))
    assert images.shape == (8, 3, 64, 64) and torch.isfinite(images).all()
    assert labels.tolist() == [few.train[i].label for i in idx.tolist()]
    assert images.std() > 0.1                             # real pixels, not a constant


@pytest.mark.skipif(not DTD_SUBSET.is_dir(), reason=f"{DTD_SUBSET} is absent (no ../shared/assets)")
def test_real_photos_dtd_subset():
    split = DTD_SUBSET / "split_zhou_DescribableTextures_subset.json"
    ds = build_dataset("dtd", str(DTD_SUBSET), split_file=str(split))
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes) == (160, 40, 120, 10)
    assert ds.split_info["matches_published"] is False    # a derived subset, not the published file
    images, labels, _ = next(batches(eval_loader(ds.test[:4], build_transform(False, 32), 4)))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 0, 0]
