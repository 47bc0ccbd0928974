"""Image decoding, CLIP transforms, bad images (fail / skip) and the loaders."""
import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import datafixtures as F
from dcp.data import (CLIP_MEAN, CLIP_STD, DatasetError, Datum, batches, build_transform,
                      eval_loader, load_image, train_loader)
from dcp.data.loader import EvalBatches, TrainBatches


def _save(path, im, fmt, **kw):
    im.save(path, fmt, **kw)
    return str(path)


@pytest.fixture
def odd_images(tmp_path):
    """Grayscale, CMYK, palette with transparency, RGBA, 16-bit and EXIF-rotated files."""
    paths = {}
    paths["gray"] = _save(tmp_path / "gray.png", Image.new("L", (40, 30), 77), "PNG")
    paths["cmyk"] = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG",
                          quality=100)
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    paths["palette"] = _save(tmp_path / "palette.png", pal, "PNG", transparency=0)
    paths["rgba"] = _save(tmp_path / "rgba.png", Image.new("RGBA", (40, 30), (5, 6, 7, 0)), "PNG")
    # stored 40 wide x 20 tall, left half red, right half blue; EXIF orientation 6 = rotate 90 CW
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    paths["exif"] = _save(tmp_path / "exif.jpg", im, "JPEG", exif=exif, quality=100)
    return paths


def test_load_image_modes(odd_images):
    gray = load_image(odd_images["gray"])
    assert gray.mode == "RGB" and gray.getpixel((3, 3)) == (77, 77, 77)
    r, g, b = load_image(odd_images["cmyk"]).getpixel((5, 5))      # pure cyan ink
    assert r < 30 and g > 225 and b > 225
    assert load_image(odd_images["palette"]).getpixel((1, 1)) == (10, 200, 30)
    assert load_image(odd_images["rgba"]).getpixel((1, 1)) == (5, 6, 7)
    assert load_image(odd_images["exif"]).size == (40, 20)      # as stored: Dassl ignores EXIF
    ex = load_image(odd_images["exif"], exif_transpose=True)
    assert ex.size == (20, 40)                            # upright: rotated by its EXIF tag
    top, bottom = ex.getpixel((10, 5)), ex.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_no_palette_warning(odd_images, recwarn):
    load_image(odd_images["palette"])
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_test_transform_matches_reference(tmp_path):
    im = Image.new("RGB", (64, 48))
    im.putdata([((x * 4) % 256, (y * 5) % 256, (x * y) % 256) for y in range(48) for x in range(64)])
    out = build_transform(False, 32)(im)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    ref = im.resize((42, 32), Image.BICUBIC).crop((5, 0, 37, 32))   # short side 32, centre crop
    raw = torch.frombuffer(bytearray(ref.tobytes()), dtype=torch.uint8).view(32, 32, 3).permute(2, 0, 1) / 255
    want = (raw - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(out, want, atol=1e-5)


def test_train_transform(odd_images):
    t = build_transform(True, 24)
    names = [type(s).__name__ for s in t.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    rrc = t.transforms[0]
    assert rrc.scale == (0.08, 1.0) and rrc.interpolation.value == "bicubic" and rrc.size == (24, 24)
    for k in odd_images:
        torch.manual_seed(0)
        a = t(load_image(odd_images[k]))
        torch.manual_seed(0)
        assert a.shape == (3, 24, 24) and torch.equal(a, t(load_image(odd_images[k])))
    assert build_transform(False).transforms[1].size == (224, 224)   # centre crop, default 224
    assert build_transform(True, 24, crop_scale=(0.5, 1.0)).transforms[0].scale == (0.5, 1.0)


def _data(tmp_path, n=6, bad=()):
    F.make_class_folders(tmp_path / "d", {"a": n // 2, "b": n - n // 2})
    data = [Datum(str(tmp_path / "d" / c / f"img_{i:03d}.jpg"), lab, c)
            for lab, c, k in ((0, "a", n // 2), (1, "b", n - n // 2)) for i in range(k)]
    for i in bad:
        with open(data[i].path, "wb") as f:
            f.write(b"not an image" if i % 2 else F.JPEG[: len(F.JPEG) // 3])   # garbage / truncated
    return data


def _idx(loader, on_bad_image="fail"):
    return torch.cat([b[2] for b in batches(loader, on_bad_image)]).tolist()


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_fails_naming_the_file(tmp_path, workers):
    data = _data(tmp_path, bad=(3,))
    with pytest.raises(DatasetError) as e:
        _idx(eval_loader(data, build_transform(False, 16), 2, workers))
    assert data[3].path in str(e.value) and "cannot decode image" in str(e.value)
    assert "\n" not in str(e.value)                       # one line, also from a worker
    gone = _data(tmp_path / "g")
    (tmp_path / "g/d/a/img_000.jpg").unlink()
    with pytest.raises(DatasetError, match="img_000.jpg"):
        _idx(eval_loader(gone, build_transform(False, 16), 2))


def test_bad_image_skip(tmp_path, caplog):
    data = _data(tmp_path, n=8, bad=(2, 3, 5))
    loader = eval_loader(data, build_transform(False, 16), 4)
    with caplog.at_level(logging.WARNING):
        got = list(batches(loader, "skip"))
    assert torch.cat([b[2] for b in got]).tolist() == [0, 1, 4, 6, 7]
    assert all(b[0].shape[1:] == (3, 16, 16) for b in got)
    assert data[5].path in caplog.text and caplog.text.count("skipping image") == 3
    # a batch whose images are all bad is dropped, the pass goes on
    loader = eval_loader(data, build_transform(False, 16), 2)
    assert [b[2].tolist() for b in batches(loader, "skip")] == [[0, 1], [4], [6, 7]]


def test_items_and_seeded_shuffle(tmp_path):
    data = _data(tmp_path, n=10)
    t = build_transform(False, 16)
    loader = train_loader(data, t, 4, seed=7)
    assert isinstance(loader, DataLoader) and not loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()
    images, labels, idx = next(batches(loader))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [data[i].label for i in idx.tolist()]
    first = _idx(train_loader(data, t, 4, seed=7))
    assert len(first) == 8 and len(set(first)) == 8 and first != sorted(first)  # last 2 dropped
    assert _idx(train_loader(data, t, 4, seed=7)) == first
    assert _idx(train_loader(data, t, 4, seed=8)) != first
    workers = train_loader(data, t, 4, seed=7, num_workers=2)      # same order with workers
    assert workers.persistent_workers and _idx(workers) == first
    workers.batch_sampler.set_epoch(8)                              # next epoch, same workers
    assert _idx(workers) == _idx(train_loader(data, t, 4, seed=8))
    assert _idx(eval_loader(data, t, 4)) == list(range(10))


def test_process_shards():
    seen = [i for r in range(3) for b in EvalBatches(10, 2, r, 3) for i in b]
    assert sorted(seen) == list(range(10))                # every test image exactly once
    assert [b for b in EvalBatches(10, 2, 1, 3)] == [[2, 3], [8, 9]]   # in its single-process batch
    one = list(TrainBatches(12, 4, seed=5))
    parts = [list(TrainBatches(12, 4, 5, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == one          # the same global batches, split
    with pytest.raises(ValueError, match="cannot be split"):
        TrainBatches(12, 4, 5, rank=0, world=3)


def test_empty_data_is_an_error():
    with pytest.raises(DatasetError, match="no images"):
        eval_loader([], build_transform(False, 16), 2)
