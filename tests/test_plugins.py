"""Plugin discovery: `plugins/*.py` and `--plugin FILE` register fusion modules usable from a
config with no edit to the package."""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

from dcp.clip.model import CLIP
from dcp.config import ConfigError, config_from_dict
from dcp.methods import build_method
from dcp.registry import CHECKOUT_PLUGINS, FUSIONS, Registry, load_plugins


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIP(64, 32, 2, 128, 8, 77, 49408, 64, 1, 2).eval()


def train_step(model, images):
    logits = model.train()(images)
    F.cross_entropy(logits, torch.arange(len(images)) % logits.shape[1]).backward()
    return logits


def test_shipped_example_plugin_is_discovered_and_trains(clip):
    assert (CHECKOUT_PLUGINS / "gated_coupling.py").is_file()
    load_plugins()
    assert "gated_coupling" in FUSIONS
    cfg = config_from_dict({"method": {"name": "ivlp", "fusion": "gated_coupling", "depth": 2}})
    model = build_method(cfg.method, clip, ["cat", "dog", "car"])
    train_step(model, torch.randn(3, 3, 32, 32))
    assert model.fusion.gate_v.grad.abs().sum() > 0 and model.fusion.gate_t.grad.abs().sum() > 0
    assert "fusion.w_tv.weight" in model.trainable_state_dict()


def test_plugin_file_from_the_command_line(tmp_path, clip):
    path = tmp_path / "swap_fusion.py"
    path.write_text(textwrap.dedent('''
        from torch import nn
        from dcp.fusion import StateFusion
        from dcp.registry import FUSIONS

        @FUSIONS.register("test_states_plugin")
        class Half(StateFusion):
            supports = ("dcp",)
            def __init__(self, dims, *, scale=1.0):
                super().__init__(dims)
                self.scale = scale
                self.mix = nn.Linear(dims.dt, dims.dv)
            def text(self, i, t, v):
                return None
            def vision(self, i, v, t):
                return v + self.scale * self.mix(t)
    '''))
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_plugins(extra=[tmp_path / "missing.py"], dirs=[], entry_points=False)
    assert load_plugins(extra=[path], dirs=[], entry_points=False) == [str(path.resolve())]
    assert load_plugins(extra=[path], dirs=[], entry_points=False) == []      # imported once
    cfg = config_from_dict({"method": {"name": "dcp", "fusion": "test_states_plugin", "depth": 2,
                                       "n_ctx": 3, "n_ctx_vision": 3, "fusion_args": {"scale": 0.5}}})
    model = build_method(cfg.method, clip, ["cat", "dog"])
    assert model.fusion.scale == 0.5
    images = torch.randn(2, 3, 32, 32)
    train_step(model, images)
    assert model.fusion.mix.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images, model.precompute()))
    with pytest.raises(ConfigError, match="'test_states_plugin' has no option 'scael'"):
        config_from_dict({"method": {"name": "dcp", "fusion": "test_states_plugin", "depth": 2,
                                     "fusion_args": {"scael": 1}}})
    with pytest.raises(ConfigError, match="'test_states_plugin' does not support method 'ivlp'"):
        config_from_dict({"method": {"name": "ivlp", "fusion": "test_states_plugin", "depth": 2}})


def test_registry_errors():
    reg = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(KeyError, match="unknown thing 'b'; registered: a"):
        reg.get("b")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(float)
