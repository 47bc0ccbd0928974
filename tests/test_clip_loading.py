"""dcp.clip.load and the checkpoint readers, on tiny CLIPs in OpenAI's formats, against OpenAI's
reference implementation (clip-anytorch)."""
import hashlib
import io
import logging
import os
import pickle
import shutil
import warnings
import zipfile
from typing import List
from urllib.error import URLError

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import OPENAI_ARCHITECTURES, openai_state_dict, save_openai_torchscript
from dcp import clip as dclip
from dcp.clip import loading

PROMPTS = ["a photo of a dog.", "a photo of a cat.", "ITAP of a banded texture."]


def _images(resolution: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, resolution, resolution, generator=g)


def _assert_features_match(model, reference, resolution: int):
    """encode_image / encode_text / logits of `model` equal the reference's at fp32 precision."""
    images, tokens = _images(resolution), dclip.tokenize(PROMPTS)
    with torch.no_grad():
        pairs = [(model.encode_image(images), reference.encode_image(images)),
                 (model.encode_text(tokens), reference.encode_text(tokens)),
                 (model(images, tokens)[0], reference(images, tokens)[0])]
    for ours, ref in pairs:
        assert ours.dtype == torch.float32 and ours.shape == ref.shape
        assert ref.abs().max() > 1e-2                       # not a degenerate comparison
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def _reference(openai_clip, state_dict):
    """OpenAI's model on CPU, as `clip.load` returns it: build_model, then fp32."""
    return openai_clip.model.build_model(dict(state_dict)).float().eval()


@pytest.fixture(scope="module")
def vit_script(tiny_vit_checkpoint):
    return tiny_vit_checkpoint


@pytest.fixture(scope="module")
def rn_script(tiny_rn_state_dict, tmp_path_factory):
    return save_openai_torchscript(tiny_rn_state_dict, tmp_path_factory.mktemp("rn") / "tiny-RN.pt")


def _jit_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def _assert_same_state(ours, theirs):
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        assert ours[k].stride() == v.stride() and torch.equal(ours[k], v), k


# ----------------------------------------------------------------------------- TorchScript reader

@pytest.mark.parametrize("which", ["vit_script", "rn_script"])
def test_torchscript_reader_equals_jit_load(which, request):
    path = request.getfixturevalue(which)
    ours = dclip.read_state_dict(path)
    theirs = _jit_state_dict(path)
    _assert_same_state(ours, theirs)
    assert {"input_resolution", "context_length", "vocab_size"} <= set(ours)
    assert ours["visual.conv1.weight"].dtype == torch.float16      # stored as OpenAI stores it


def test_torchscript_reader_without_buffer_lists(vit_script, tmp_path):
    """Archives whose code has no `__buffers__` line (older PyTorch): non-parameter tensors
    are the buffers."""
    path = tmp_path / "old.pt"
    with zipfile.ZipFile(vit_script) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(l for l in lines if "__buffers__" not in l).encode()
            dst.writestr(info, data)
    assert b"__buffers__" not in b"".join(zipfile.ZipFile(path).read(n) for n in
                                         zipfile.ZipFile(path).namelist() if n.endswith(".py"))
    _assert_same_state(loading.read_torchscript_state_dict(path), _jit_state_dict(vit_script))


class _Scripted(nn.Module):
    """A module whose TorchScript archive has every layout feature: nested containers,
    nn.MultiheadAttention (None parameters), BatchNorm buffers, a parameter on the root, a
    plain tensor attribute (not state), typed list/dict attributes, shared storages."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.LayerNorm(4)])
        self.attn = nn.MultiheadAttention(4, 2)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(torch.randn(3).half())
        self.register_buffer("counts", torch.arange(6).view(2, 3).t())      # non-contiguous
        self.plain = torch.ones(2)
        self.sizes: List[int] = [1, 2]
        self.table = {"a": torch.zeros(1)}

    def forward(self, x):
        x = self.blocks[1](self.blocks[0](x))
        return self.bn(x + self.attn(x, x, x)[0].sum()) + self.plain.sum() + self.sizes[0]


def test_torchscript_reader_on_scripted_module(tmp_path):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Scripted().eval()).save(str(path))
    ours = loading.read_torchscript_state_dict(path)
    _assert_same_state(ours, _jit_state_dict(path))
    assert "plain" not in ours and "attn.q_proj_weight" not in ours and "counts" in ours


def _evil_archive(path, payload):
    """A TorchScript-shaped zip whose data.pkl calls `payload` (a global) on load."""
    class Evil:
        def __reduce__(self):
            return payload
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("evil/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("evil/version", "3\n")
    return path


@pytest.mark.parametrize("payload,shown", [
    (lambda marker: (os.system, (f"touch {marker}",)), "system"),
    (lambda marker: (eval, (f"open({str(marker)!r}, 'w')",)), "eval"),
    (lambda marker: (shutil.copy, (__file__, str(marker))), "shutil.copy"),
])
def test_torchscript_reader_refuses_code(payload, shown, tmp_path):
    marker = tmp_path / "pwned"
    path = _evil_archive(tmp_path / "evil.pt", payload(marker))
    with pytest.raises(dclip.CheckpointError, match=f"refused: data.pkl references .*{shown}") as err:
        dclip.read_state_dict(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_plain_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    path = tmp_path / "evil_state.pt"
    torch.save({"visual.proj": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(dclip.CheckpointError, match="refused.*system") as err:
        dclip.read_state_dict(path)
    assert str(path) in str(err.value)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- load()

@pytest.mark.parametrize("arch", ["vit", "rn"])
@pytest.mark.parametrize("fmt", ["torchscript", "state_dict", "wrapped", "module_prefix",
                                 "wrapped_module_prefix"])
def test_load_matches_reference(arch, fmt, request, openai_clip, tmp_path):
    sd = request.getfixturevalue(f"tiny_{arch}_state_dict")
    if fmt == "torchscript":
        path = request.getfixturevalue(f"{arch}_script")
    else:
        obj = {("module." + k if "module" in fmt else k): v for k, v in sd.items()}
        path = tmp_path / "ckpt.pt"
        torch.save({"state_dict": obj, "epoch": 3} if "wrapped" in fmt else obj, path)
    model, preprocess = dclip.load(path, device="cpu")
    assert isinstance(model, dclip.CLIP) and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    resolution = 32 if arch == "vit" else 64
    assert model.visual.input_resolution == resolution
    assert model.context_length == 77 and model.vocab_size == 49408
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, resolution, resolution)
    for k, v in model.state_dict().items():          # every weight is the file's, none random
        assert torch.equal(v, sd[k].float()), k
    if fmt in ("torchscript", "state_dict"):          # the variants hold the same weights
        _assert_features_match(model, _reference(openai_clip, sd), resolution)


def test_load_rejects_state_dict_of_something_else(tmp_path, tiny_vit_state_dict):
    path = tmp_path / "resnet18.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(dclip.CheckpointError, match="not an OpenAI CLIP checkpoint"):
        dclip.load(path)
    partial = {k: v for k, v in tiny_vit_state_dict.items() if k != "ln_final.weight"}
    torch.save(partial, path)
    with pytest.raises(dclip.CheckpointError, match="ln_final.weight") as err:
        dclip.load(path)
    assert str(path) in str(err.value)
    torch.save({"state_dict": [1, 2]}, path)
    with pytest.raises(dclip.CheckpointError, match="expected a state dict"):
        dclip.load(path)


def test_unknown_name_lists_models():
    with pytest.raises(dclip.CheckpointError, match="ViT-B/16") as err:
        dclip.load("ViT-B/17")
    assert "neither a CLIP model name" in str(err.value)


# ----------------------------------------------------------------------------- damaged files

def _damaged_files(good_script, good_plain, tmp_path):
    data = good_script.read_bytes()
    files = {
        "truncated_archive": data[: len(data) // 2],
        "truncated_plain": good_plain.read_bytes()[:-2000],
        "random_bytes": os.urandom(4096),
        "empty": b"",
    }
    # flip bytes inside a tensor record of the archive: the zip's CRC check must catch it
    with zipfile.ZipFile(good_script) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    corrupt = bytearray(data)
    header = info.header_offset                     # local header: name and extra lengths at 26, 28
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") \
        + int.from_bytes(data[header + 28:header + 30], "little")
    corrupt[start:start + 8] = bytes(255 - b for b in corrupt[start:start + 8])
    files["corrupt_archive"] = bytes(corrupt)
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    return paths


def test_damaged_files_are_clear_errors(vit_script, tiny_vit_state_dict, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(tiny_vit_state_dict, plain)
    for name, path in _damaged_files(vit_script, plain, tmp_path).items():
        with pytest.raises(dclip.CheckpointError) as err:
            dclip.load(path)
        message = str(err.value)
        assert str(path) in message, name
        assert "corrupt" in message and "delete it" in message, (name, message)


def test_missing_file():
    with pytest.raises(dclip.CheckpointError, match="no such file"):
        dclip.read_state_dict("/nonexistent/ViT-B-16.pt")


# ----------------------------------------------------------------------------- download / cache

def test_models_are_openais(openai_clip):
    assert dclip.available_models() == list(openai_clip.clip._MODELS)
    assert loading.MODELS == openai_clip.clip._MODELS
    assert loading.checkpoint_path("ViT-L/14@336px", "/c").as_posix() == "/c/ViT-L-14-336px.pt"


class _Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture
def fake_model(monkeypatch, vit_script):
    """Registers model 'tiny' whose URL embeds the tiny archive's SHA-256, and a fake urlopen
    serving `served[0]`; returns (requested URLs, served)."""
    served = [vit_script.read_bytes()]
    sha = hashlib.sha256(served[0]).hexdigest()
    monkeypatch.setitem(loading.MODELS, "tiny", f"https://example.invalid/clip/{sha}/tiny-ViT.pt")
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return _Response(served[0])
    monkeypatch.setattr(loading, "urlopen", urlopen)
    return calls, served


def _offline(monkeypatch):
    def urlopen(url, timeout=None):
        raise URLError("no network")
    monkeypatch.setattr(loading, "urlopen", urlopen)


def test_download_verifies_writes_and_reuses(fake_model, tmp_path, monkeypatch, caplog, openai_clip,
                                             tiny_vit_state_dict):
    calls, _ = fake_model
    monkeypatch.setenv("DCP_CLIP_CACHE", str(tmp_path / "env-cache"))
    with caplog.at_level(logging.INFO):
        model, _ = dclip.load("tiny", device="cpu")
    target = tmp_path / "env-cache" / "tiny-ViT.pt"                 # $DCP_CLIP_CACHE honoured
    assert target.is_file() and len(calls) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-ViT.pt"]   # no temp left
    assert "downloading tiny-ViT.pt" in caplog.text                 # progress was reported
    _assert_features_match(model, _reference(openai_clip, tiny_vit_state_dict), 32)
    dclip.load("tiny", device="cpu")                               # cached: no second request
    assert len(calls) == 1
    dclip.load("tiny", device="cpu", download_root=tmp_path / "root")   # argument beats the env
    assert (tmp_path / "root" / "tiny-ViT.pt").is_file() and len(calls) == 2


def test_default_cache_is_openais(monkeypatch):
    monkeypatch.delenv("DCP_CLIP_CACHE", raising=False)
    assert loading.checkpoint_path("ViT-B/16") == loading.Path("~/.cache/clip/ViT-B-16.pt").expanduser()
    assert loading.checkpoint_path("ViT-B/16").name == "ViT-B-16.pt"


def test_wrong_checksum_is_downloaded_again(fake_model, tmp_path, caplog):
    calls, served = fake_model
    target = tmp_path / "tiny-ViT.pt"
    target.write_bytes(served[0][:1000])                            # an interrupted old download
    with caplog.at_level(logging.WARNING):
        dclip.load("tiny", device="cpu", download_root=tmp_path)
    assert "SHA-256" in caplog.text and len(calls) == 1
    assert target.read_bytes() == served[0]


def test_corrupted_transfer_writes_nothing(fake_model, tmp_path):
    calls, served = fake_model
    served[0] = served[0][:-10] + b"0123456789"
    with pytest.raises(dclip.CheckpointError, match="SHA-256 .* expected"):
        dclip.load("tiny", device="cpu", download_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_without_file_names_path_url_and_option(fake_model, tmp_path, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(dclip.CheckpointError) as err:
        dclip.load("tiny", download_root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "tiny-ViT.pt") in message and "is not there" in message
    assert loading.MODELS["tiny"] in message and "--clip PATH" in message
    assert "no network" in message


def test_offline_with_wrong_checksum(fake_model, tmp_path, monkeypatch):
    _offline(monkeypatch)
    (tmp_path / "tiny-ViT.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(dclip.CheckpointError, match="has SHA-256 .* expected .*corrupt"):
        dclip.load("tiny", download_root=tmp_path)


def test_offline_with_good_file_needs_no_network(fake_model, tmp_path, monkeypatch, vit_script):
    shutil.copy(vit_script, tmp_path / "tiny-ViT.pt")     # e.g. downloaded by OpenAI's package
    _offline(monkeypatch)
    model, _ = dclip.load("tiny", device="cpu", download_root=tmp_path)
    assert model.visual.input_resolution == 32


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_matches_reference(openai_clip):
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(70, 97, 3, generator=g) * 255).to(torch.uint8).numpy()
    rgb = Image.fromarray(pixels)
    reference = openai_clip.clip._transform(64)
    ours = dclip.image_transform(64)
    transparent = rgb.convert("RGBA")
    transparent.putalpha(Image.fromarray(pixels[..., 0]))
    # every PIL mode a user may hand over; OpenAI converts to RGB after the crop, and PIL resizes
    # palette and 1-bit images by nearest neighbour, RGBA with premultiplied alpha
    for image in [rgb, rgb.transpose(Image.Transpose.TRANSPOSE), rgb.convert("L"),
                  Image.new("RGB", (64, 64), (10, 200, 30)), rgb.convert("RGBA"), transparent,
                  rgb.convert("P"), rgb.convert("1"), rgb.convert("CMYK"), rgb.convert("YCbCr"),
                  rgb.convert("L").convert("I;16")]:
        x = ours(image)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert torch.equal(x, reference(image)), image.mode


def test_clip_mean_std():
    assert dclip.CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert dclip.CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- full size

@pytest.mark.slow
def test_vit_b16_at_full_size_matches_reference(openai_clip, tmp_path):
    """ViT-B/16 dimensions, random weights, OpenAI's TorchScript format: one 224 px image and a
    few prompts through `load` + preprocess + tokenize, against the reference."""
    sd = openai_state_dict(OPENAI_ARCHITECTURES["ViT-B/16"], seed=3)
    path = save_openai_torchscript(sd, tmp_path / "ViT-B-16.pt")
    model, preprocess = dclip.load(path, device="cpu")
    assert model.visual.input_resolution == 224
    reference = _reference(openai_clip, sd)
    del sd
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(240, 320, 3, generator=g) * 255).to(torch.uint8).numpy()
    image = preprocess(Image.fromarray(pixels)).unsqueeze(0)
    assert torch.equal(image, openai_clip.clip._transform(224)(Image.fromarray(pixels)).unsqueeze(0))
    tokens = dclip.tokenize(PROMPTS)
    with torch.no_grad():
        pairs = [(model.encode_image(image), reference.encode_image(image)),
                 (model.encode_text(tokens), reference.encode_text(tokens))]
    for ours, ref in pairs:
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
