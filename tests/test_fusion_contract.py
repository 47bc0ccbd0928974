"""The fusion contract (dcp/fusion/base.py) for every registered fusion, `plugins/` included:
each with every method it claims to support, in training and evaluation, with and without the
speed-ups; the exact evaluation paths must give the same logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcp.clip.model import CLIP
from dcp.config import ConfigError, config_from_dict
from dcp.fusion import PromptFusion, StateFusion
from dcp.methods import build_method
from dcp.registry import FUSIONS, METHODS, load_plugins

load_plugins()                         # plugins/*.py of the checkout, and entry points
NAMES = list(FUSIONS.names())          # built-ins (registered on first use) and plugins
CASES = [(f, m) for f in NAMES for m in FUSIONS.get(f).supports]
CLASSES = ["cat", "dog", "red car", "sea_lion"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIP(64, 32, 3, 64, 8, 77, 49408, 64, 2, 3).eval()   # E = Dt (MuDPT released)


def _options(fusion: str, method: str):
    m = {"name": method, "fusion": fusion, "depth": 3}
    if method != "vpt":
        m.update(n_ctx=2, n_ctx_vision=2)
    return config_from_dict({"method": m}).method


def test_every_fusion_is_tested_and_of_one_kind():
    assert {"none", "cmpa", "cmpa_released", "injection", "linear_injection", "maple",
            "gated_coupling"} <= set(NAMES)
    for name in NAMES:
        cls = FUSIONS.get(name)
        assert issubclass(cls, (PromptFusion, StateFusion)) and cls.supports, name
        assert set(cls.supports) <= set(METHODS.names()), name
        assert any(f == name for f, _ in CASES)


@pytest.mark.parametrize("fusion,method", CASES)
def test_contract(clip, fusion, method):
    opts = _options(fusion, method)
    torch.manual_seed(1)
    fast = build_method(opts, clip, CLASSES)
    ref = build_method(opts, clip, CLASSES, speedups=False)
    ref.load_trainable_state_dict(fast.trainable_state_dict())
    assert fast.fusion.__class__ is FUSIONS.get(fusion)
    images = torch.randn(3, 3, 32, 32)

    # training: one step's logits agree with the reference path, and gradients reach the fusion
    torch.manual_seed(2)
    logits = fast.train()(images)
    torch.manual_seed(2)
    torch.testing.assert_close(logits, ref.train()(images), atol=1e-5, rtol=1e-5)
    assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    # some fusion parameters may get none (DCP released keeps CMPA's unused text half, as
    # the released code does), but a fusion with parameters must learn through some of them
    grads = [p.grad for p in fast.fusion.parameters() if p.grad is not None]
    assert not list(fast.fusion.parameters()) or any(g.abs().sum() > 0 for g in grads)
    ref.load_trainable_state_dict(fast.trainable_state_dict())   # the buffers training moved

    # evaluation: per batch, with the cache, and without the speed-ups: the same logits
    fast.eval(), ref.eval()
    with torch.no_grad():
        plain = fast(images)
        torch.testing.assert_close(fast(images, fast.precompute()), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref(images), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref(images, ref.precompute()), plain, atol=1e-5, rtol=1e-5)
        if not FUSIONS.get(fusion).batch_dependent:   # an image's logits ignore its batch
            torch.testing.assert_close(fast(images[:1], fast.precompute()), plain[:1],
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", sorted(NAMES))
def test_unsupported_methods_are_refused_by_name(fusion):
    supported = FUSIONS.get(fusion).supports
    for method in ("vpt", "ivlp", "maple", "mudpt", "dcp"):
        if method in supported:
            continue
        with pytest.raises(ConfigError, match=f"fusion {fusion!r} does not support method {method!r}"):
            _options(fusion, method)
