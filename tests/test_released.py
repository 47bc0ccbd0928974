"""Checkpoints written by the authors' released code (Dassl layout, docs/methods.md, "Released
checkpoints"): built here from the key layout listed there, saved as Dassl saves them (fp16
tensors, pickled SGD and CosineAnnealingLR), and loaded into the equivalent model."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from dcp.clip.model import CLIP
from dcp.config import config_from_dict
from dcp.methods import build_method
from dcp.released import ReleasedCheckpointError, load_released

NAMES = ["cat", "dog", "car"]
D = {"depth": 3}


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIP(64, 32, 3, 128, 8, 77, 49408, 64, 1, 3).eval()


def build(clip, name, seed=0, **opts):
    torch.manual_seed(seed)
    return build_method(config_from_dict({"method": {"name": name, **opts}}).method, clip, NAMES)


def _lin(sd, prefix, lin):
    sd[prefix + ".weight"], sd[prefix + ".bias"] = lin.weight, lin.bias


def released_layout(model):
    """The released code's state dict for `model`'s prompts, per the key list of docs/methods.md,
    plus frozen/class-dependent entries that the loader must ignore."""
    name, sd = model.opts.name, {}
    if name in ("coop", "cocoop"):
        sd["ctx"] = model.ctx
        sd["token_prefix"], sd["token_suffix"] = torch.zeros(3, 1, 64), torch.zeros(3, 60, 64)
        if name == "cocoop":
            _lin(sd, "meta_net.linear1", model.meta_net.linear1)
            _lin(sd, "meta_net.linear2", model.meta_net.linear2)
    if name in ("vpt", "ivlp"):
        sd["image_encoder.VPT"] = model.vision_ctx
        for i, p in enumerate(model.vision_deep, 1):
            sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = p
        sd["image_encoder.conv1.weight"] = torch.zeros(128, 3, 8, 8)           # frozen CLIP
    if name == "ivlp":
        sd["prompt_learner.ctx"] = model.ctx
        for i, p in enumerate(model.text_deep, 1):
            sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = p
    if name == "maple":
        sd["prompt_learner.ctx"] = model.ctx
        _lin(sd, "prompt_learner.proj", model.fusion.proj[0])
        for j, p in enumerate(model.text_deep):
            sd[f"prompt_learner.compound_prompts_text.{j}"] = p
            _lin(sd, f"prompt_learner.compound_prompt_projections.{j}", model.fusion.proj[j + 1])
        sd["prompt_learner.token_prefix"] = torch.zeros(3, 1, 64)
    if name == "dcp":
        sd["prompt_learner.prompts_text"] = model.ctx
        sd["prompt_learner.prompts_visual"] = model.vision_ctx
        names = {"attn_v": "promt_attention_visual", "ln_1_v": "ln_pa_1_visual",
                 "mlp_v": "mlp_pa_visual", "ln_2_v": "ln_pa_2_visual", "t2v": "proj_t2v",
                 "v2t": "proj_v2t", "attn_t": "promt_attention_text", "ln_1_t": "ln_pa_1_text",
                 "mlp_t": "mlp_pa_text", "ln_2_t": "ln_pa_2_text"}
        blocks = model.fusion.blocks
        for i in range(12):       # the released model has a CMPA module in every block
            shared = model.opts.share
            used = shared or 1 <= i <= len(blocks)    # per block: 0 and >= P are not used
            blk = blocks[0] if shared or not used else blocks[i - 1]
            for k, v in blk.state_dict().items():
                mod, rest = k.split(".", 1)
                sd[f"encoder.resblocks.{i}.prompt_attn.{names[mod]}.{rest}"] = (
                    v if used else torch.full_like(v, 7.0))        # unused: must be ignored
    if name == "mudpt":
        sd["mudpt_prompt_learner.ctx"] = model.ctx
        sd["mudpt_prompt_learner.deep_prompts"] = model.text_deep
        _lin(sd, "mudpt_prompt_learner.embed_projection", model.fusion.w_e)
        _lin(sd, "mudpt_prompt_learner.deep_projections", model.fusion.w_tv)
        sd["image_encoder.visual_ctx"] = model.vision_ctx
        sd["image_encoder.visual_ctx_deep_prompts"] = model.vision_deep
        _lin(sd, "image_encoder.visual_ctx_deep_projections", model.fusion.w_vt)
    return {k: v.detach().clone().half() for k, v in sd.items()}


def save_dassl(sd, path, epoch=5):
    """As Dassl's save_checkpoint: the warm-up scheduler's state holds a CosineAnnealingLR
    object, which holds the SGD optimiser."""
    params = [torch.nn.Parameter(v.float()) for v in sd.values()][:2]
    opt = torch.optim.SGD(params, lr=0.0035, momentum=0.9, weight_decay=5e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epoch)
    scheduler = {"successor": cosine, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": epoch,
                 "base_lrs": [0.0035], "_step_count": epoch + 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "epoch": epoch, "optimizer": opt.state_dict(),
                "scheduler": scheduler, "val_result": None}, path)
    return path


CASES = [("coop", {}), ("coop", {"class_specific": True}), ("cocoop", {}), ("vpt", D),
         ("ivlp", D), ("maple", D), ("dcp", {**D, "variant": "released"}),
         ("dcp", {**D, "variant": "released", "share": False}),
         ("dcp", {"depth": 2, "variant": "released", "share": False}),     # one module, block 1
         ("mudpt", {**D, "variant": "released"})]


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_round_trip(tmp_path, clip, name, opts):
    trained = build(clip, name, seed=1, **opts)
    sd = released_layout(trained)
    folder = {"coop": "prompt_learner", "cocoop": "prompt_learner", "vpt": "prompt_learner",
              "ivlp": "VLPromptLearner", "maple": "MultiModalPromptLearner",
              "dcp": "MultiModalPromptLearner", "mudpt": "MultimodalDeepPromptTuning"}[name]
    save_dassl(sd, tmp_path / "out" / folder / "model.pth.tar-2", epoch=2)
    save_dassl(sd, tmp_path / "out" / folder / "model.pth.tar-10", epoch=10)
    fresh = build(clip, name, seed=2, **opts)
    assert fresh.load_released(tmp_path / "out") is None          # a Dassl output folder
    expected = {k: v.half().float() for k, v in trained.trainable_state_dict().items()}
    got = fresh.trainable_state_dict()
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    again = build(clip, name, seed=3, **opts)
    load_released(again, tmp_path / "out" / folder / "model.pth.tar-10")   # one file
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), again.eval()(images))


def test_newest_epoch_is_picked(tmp_path, clip):
    old, new = build(clip, "coop", seed=1), build(clip, "coop", seed=2)
    save_dassl(released_layout(old), tmp_path / "prompt_learner" / "model.pth.tar-9")
    save_dassl(released_layout(new), tmp_path / "prompt_learner" / "model.pth.tar-10")
    model = build(clip, "coop", seed=3)
    model.load_released(tmp_path)
    assert torch.equal(model.ctx, new.ctx.detach().half().float())


def test_wrong_method_variant_or_shape_is_a_clear_error(tmp_path, clip):
    maple_file = save_dassl(released_layout(build(clip, "maple", **D)), tmp_path / "maple.pth.tar-5")
    with pytest.raises(ReleasedCheckpointError, match="prompts_text.*looks like a MaPLe checkpoint"):
        build(clip, "dcp", **D, variant="released").load_released(maple_file)
    with pytest.raises(ReleasedCheckpointError, match="variant: released"):
        build(clip, "dcp", **D).load_released(maple_file)
    with pytest.raises(ReleasedCheckpointError, match="wrong shape.*ctx"):
        build(clip, "maple", **D, n_ctx=3, n_ctx_vision=3).load_released(maple_file)
    with pytest.raises(ReleasedCheckpointError, match="missing.*text_deep|unexpected"):
        build(clip, "maple", depth=2).load_released(maple_file)
    with pytest.raises(ReleasedCheckpointError, match="released checkpoint not found: .*empty_dir_that"):
        build(clip, "coop").load_released(tmp_path / "empty_dir_that_is_missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleasedCheckpointError, match="prompt_learner/model.pth.tar-<epoch>"):
        build(clip, "coop").load_released(tmp_path / "empty")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_in_a_checkpoint_is_never_run(tmp_path, clip):
    bad = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {"ctx": torch.zeros(16, 64)}, "scheduler": Evil()}, bad)
    with pytest.raises(ReleasedCheckpointError, match="only tensors and"):
        build(clip, "coop").load_released(bad)
    raw = tmp_path / "raw.pth.tar-1"
    raw.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(ReleasedCheckpointError):
        build(clip, "coop").load_released(raw)
    good = save_dassl(released_layout(build(clip, "coop")), tmp_path / "t" / "model.pth.tar-1")
    truncated = tmp_path / "trunc.pth.tar-1"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ReleasedCheckpointError, match="cannot read"):
        build(clip, "coop").load_released(truncated)
