"""Every method on the one prompt mechanism: shapes, gradients, frozen CLIP, batch
(in)dependence, exact speed-ups, the parameter counts docs/methods.md pins and released-code
behaviours."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dcp.clip.model import CLIP
from dcp.config import ConfigError, config_from_dict
from dcp.fusion import CMPABlock
from dcp.methods import build_method
from dcp.prompting import encode_texts, run_towers, static_step

CLASSNAMES = ["dog", "tabby_cat", "space shuttle", "golden retriever puppy", "oak"]
DEPTH = {"depth": 3}
# (method, options) pairs covering every method and variant, sized for a 3-block tiny CLIP.
CASES = {
    "zeroshot": ("zeroshot", {}),
    "coop": ("coop", {"n_ctx": 4}),
    "coop_middle": ("coop", {"n_ctx": 4, "class_token_position": "middle"}),
    "coop_front_csc": ("coop", {"n_ctx": 4, "class_token_position": "front", "class_specific": True}),
    "cocoop": ("cocoop", {}),
    "vpt": ("vpt", {"depth": 3, "n_ctx_vision": 3}),
    "ivlp": ("ivlp", {"depth": 3, "depth_vision": 2}),
    "maple": ("maple", DEPTH),
    "mudpt": ("mudpt", DEPTH),
    "mudpt_released": ("mudpt", {**DEPTH, "variant": "released"}),
    "dcp": ("dcp", {**DEPTH, "n_ctx": 4, "n_ctx_vision": 4}),
    "dcp_unshared": ("dcp", {**DEPTH, "n_ctx": 4, "n_ctx_vision": 4, "share": False}),
    "dcp_released": ("dcp", {**DEPTH, "n_ctx": 4, "n_ctx_vision": 4, "variant": "released"}),
}


@pytest.fixture(scope="module")
def clip():
    """Tiny ViT CLIP with E == Dt (so every variant runs), 3 blocks in each tower."""
    torch.manual_seed(0)
    return CLIP(64, 32, 3, 128, 8, 77, 49408, 64, 1, 3).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(6, 3, 32, 32)


def make(clip, case, switches=None, **over):
    """The method of `case` (seeded: the same weights for every `switches`, e.g. speedups)."""
    name, opts = CASES[case]
    torch.manual_seed(2)
    cfg = config_from_dict({"method": {"name": name, **opts, **over}})
    return build_method(cfg.method, clip, CLASSNAMES, **(switches or {}))


@pytest.mark.parametrize("case", CASES)
def test_train_step_gradients_and_frozen_clip(clip, images, case):
    model = make(clip, case).train()
    clip_before = copy.deepcopy(clip.state_dict())
    logits = model(images)
    assert logits.shape == (6, len(CLASSNAMES))
    params = dict(model.named_parameters())
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert all(not k.startswith("clip.") for k in trainable)
    if not trainable:
        assert case == "zeroshot"
        return
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    F.cross_entropy(logits, torch.arange(6) % len(CLASSNAMES)).backward()
    no_grad = {k for k in trainable if params[k].grad is None or not params[k].grad.abs().sum()}
    if case == "dcp_released":   # docs/methods.md, DCP, released 1: text half of CMPA never updated
        assert no_grad and all(k.split(".")[3] in ("attn_t", "ln_1_t", "mlp_t", "ln_2_t", "v2t")
                               for k in no_grad), no_grad
        assert {k.split(".")[3] for k in no_grad} == {"attn_t", "ln_1_t", "mlp_t", "ln_2_t", "v2t"}
    else:
        assert not no_grad
    assert all(p.grad is None for p in clip.parameters())
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    opt.step()
    for k, v in clip.state_dict().items():
        assert torch.equal(v, clip_before[k]), f"frozen CLIP weight {k} changed"
    changed = [k for k, v in model.trainable_state_dict().items() if not torch.equal(v, before[k])]
    assert changed


@pytest.mark.parametrize("case", [c for c in CASES if c != "dcp_released"])
def test_batch_independent_in_eval(clip, images, case):
    model = make(clip, case).eval()
    with torch.no_grad():
        full = model(images)
        alone = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(full, alone, atol=1e-4, rtol=1e-4)


def test_dcp_released_depends_on_its_batch(clip, images):
    """docs/methods.md, "DCP", `variant: released` item 2: visual states are pooled over the batch
    and the result broadcast."""
    model = make(clip, "dcp_released").eval()
    with torch.no_grad():
        full = model(images)
        alone = model(images[:1])
        again = model(torch.cat([images[:1], images[3:]]))
    assert (full[0] - alone[0]).abs().max() > 1e-3
    assert (full[0] - again[0]).abs().max() > 1e-3
    torch.testing.assert_close(full, model(images))           # deterministic, same batch


@pytest.mark.parametrize("fusing", ["mean", "max", "first"])
def test_dcp_released_pooling_matches_spec(clip, images, fusing):
    """v' = CMPA_v(pool_batch(v), t) for every image; the text tower only ever sees T0."""
    model = make(clip, "dcp_released", fusing=fusing).eval()
    blk, n = model.fusion.blocks[0], 4
    pool = {"mean": lambda x: x.mean(0), "max": lambda x: x.max(0).values, "first": lambda x: x[0]}[fusing]
    with torch.no_grad():
        # text: CoOp-like, T0 at the input only; its prompt states feed the visual side
        states = []
        def tstep(i, v, t):
            if i:
                states.append(t[:1])
            return None, (model.ctx if i == 0 else None)
        L = model.texts.cut
        _, tx = run_towers(clip, text=clip.token_embedding(model.text_tokens[:, :L]), step=tstep, depth=3)
        f_txt = clip.text_head(tx, model.text_eot)

        def vstep(i, v, t):
            if i == 0:
                return model.vision_ctx, None
            return blk.vision(pool(v)[None], states[i - 1])[0], None
        vx, _ = run_towers(clip, images, step=vstep, depth=3)
        expected = model.logits(clip.visual.head(vx), f_txt)
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(images, model.precompute()), expected, atol=1e-5, rtol=1e-5)


def test_dcp_released_text_tower_unaffected_by_cmpa(clip):
    model = make(clip, "dcp_released").eval()
    with torch.no_grad():
        before = model.precompute()["text"]
        for p in model.fusion.parameters():
            p.add_(torch.randn_like(p))
        after = model.precompute()["text"]
        coop_like = encode_texts(clip, model.texts, static_step(text=[model.ctx]), depth=1)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    torch.testing.assert_close(before, coop_like, atol=1e-6, rtol=1e-6)


def test_dcp_paper_matches_naive_lockstep(clip, images):
    """The paper variant, computed naively: every class sequence runs in lock-step with the
    vision tower, CMPA applied per block; the fast path (a 1+n token prompt path) agrees."""
    model = make(clip, "dcp").train()
    blk = model.fusion.blocks[0]
    rm = model.fusion.running_v.clone()
    logits = model(images)
    with torch.no_grad():
        def step(i, v, t):
            if i == 0:
                return model.vision_ctx, model.ctx
            assert torch.allclose(t, t[:1].expand_as(t), atol=1e-5)    # class-independent slots
            v_bar = v.mean(0, keepdim=True)
            return blk.vision(v, t[:1]), blk.text(t[:1], v_bar)
        L = model.texts.cut
        vx, tx = run_towers(clip, images, clip.token_embedding(model.text_tokens[:, :L]), step, 3)
        expected = model.logits(clip.visual.head(vx), clip.text_head(tx, model.text_eot))
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(model.fusion.running_v, rm)           # updated in training


def test_dcp_paper_running_mean(clip, images):
    model = make(clip, "dcp")
    rv = model.fusion.running_v
    assert rv.shape == (2, 4, 128) and not rv.abs().sum()         # (P-1, n, Dv), starts at zero
    assert "fusion.running_v" in model.trainable_state_dict()
    model.eval()
    with torch.no_grad():
        model(images)
    assert not rv.abs().sum()                                     # eval never updates it
    model.train()
    captured = {}
    orig = model.fusion.summary
    def spy(i, v):
        captured.setdefault(i, v.detach().mean(0).clone())
        return orig(i, v)
    model.fusion.summary = spy
    with torch.no_grad():
        model(images)
    del model.fusion.summary
    for i in (1, 2):
        torch.testing.assert_close(rv[i - 1], 0.1 * captured[i])  # momentum 0.1 from zero
    model.eval()   # eval text side uses the buffer: changing it changes the class features
    with torch.no_grad():
        a = model.precompute()["text"]
        rv.add_(1.0)
        b = model.precompute()["text"]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_speedups_are_exact(clip, images, case):
    """Cut text, once-per-evaluation cache and chunked class text give the same logits."""
    model = make(clip, case).eval()
    reference = make(clip, case, {"speedups": False}).eval()
    in_twos = make(clip, case, {"text_chunk": 2}).eval()
    with torch.no_grad():
        fast = model(images, model.precompute())
        slow = reference(images)
        chunked = in_twos(images, in_twos.precompute())
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(fast, chunked, atol=1e-5, rtol=1e-5)


def test_text_cut_length(clip):
    model = make(clip, "maple")
    eot = model.text_eot
    assert model.texts.cut == int(eot.max()) + 1 < 20


def test_templates_and_init_words(clip):
    from dcp.clip.tokenizer import tokenize
    maple = make(clip, "maple")           # n=2: "a photo of a {}." with "a photo" learnable
    assert torch.equal(maple.text_tokens[0], tokenize("a photo of a dog.")[0])
    torch.testing.assert_close(maple.ctx, clip.token_embedding(tokenize("a photo")[0, 1:3]))
    mudpt_r = make(clip, "mudpt_released")   # released: template cut to "a photo {}."
    assert torch.equal(mudpt_r.text_tokens[0], tokenize("a photo dog.")[0])
    dcp = make(clip, "dcp", n_ctx=16, n_ctx_vision=16)     # n > 4: random, "X X ... X"
    assert torch.equal(dcp.text_tokens[1], tokenize(" ".join(["X"] * 16) + " tabby cat.")[0])
    vpt = make(clip, "vpt")
    assert torch.equal(vpt.text_tokens[2], tokenize("a photo of a space shuttle.")[0])
    coop = make(clip, "coop", init="a photo of a")       # CoOp: n = number of init words
    assert coop.ctx.shape == (4, 64)


def test_coop_class_token_positions(clip):
    from dcp.clip.tokenizer import tokenize
    emb = lambda text: clip.token_embedding(tokenize(text)[0])
    end, mid, front = (make(clip, c) for c in ("coop", "coop_middle", "coop_front_csc"))
    name = emb("golden retriever puppy.")[1:4]                   # 3 class tokens
    e, m, f = end.embeddings()[3], mid.embeddings()[3], front.embeddings()[3]
    torch.testing.assert_close(e[1:5], end.ctx)
    torch.testing.assert_close(e[5:8], name)
    torch.testing.assert_close(m[1:3], mid.ctx[:2])
    torch.testing.assert_close(m[3:6], name)
    torch.testing.assert_close(m[6:8], mid.ctx[2:])
    torch.testing.assert_close(f[1:4], name)
    torch.testing.assert_close(f[4:8], front.ctx[3])             # class-specific context
    for x in (e, m, f):                                           # '.', EOS unchanged
        torch.testing.assert_close(x[8:10], emb("golden retriever puppy.")[4:6])


def test_maple_vision_prompts_are_linear_maps_of_text(clip):
    model = make(clip, "maple")
    v, t = model.fusion(*model.banks())
    assert len(v) == len(t) == 3
    for i in range(3):
        torch.testing.assert_close(v[i], model.fusion.proj[i](t[i]))
    assert not hasattr(model, "vision_ctx")


def test_mudpt_fusion_follows_spec(clip):
    paper, rel = make(clip, "mudpt"), make(clip, "mudpt_released")
    with torch.no_grad():
        v, t = rel.fusion(*rel.banks())
        V, T, f = rel.banks()[0], rel.banks()[1], rel.fusion
        torch.testing.assert_close(v[0], V[0] + f.w_e(T[0]))
        torch.testing.assert_close(t[0], T[0])
        torch.testing.assert_close(v[2], V[2] + f.w_tv(T[2]))
        torch.testing.assert_close(t[2], T[2] + f.w_vt(V[2]))
        v, t = paper.fusion(*paper.banks())
        V, T, f = paper.banks()[0], paper.banks()[1], paper.fusion
        assert torch.equal(v[0], V[0]) and torch.equal(t[0], T[0])      # no fusion at block 0
        n = 2
        s = f.encoder(torch.cat([T[1], f.w_in(V[1])])[None] + f.modality.repeat_interleave(n, 0))[0]
        torch.testing.assert_close(v[1], V[1] + f.w_tv(s[:n]))
        torch.testing.assert_close(t[1], T[1] + f.w_vt(s[n:]))
    enc = paper.fusion.encoder          # post-norm, Dt // 64 heads, FFN 4 Dt, GELU, dropout 0
    assert (enc.norm_first, enc.self_attn.num_heads, enc.linear1.out_features) == (False, 1, 256)
    assert enc.activation is F.gelu and enc.dropout.p == enc.dropout1.p == enc.dropout2.p == 0.0


def test_vision_prompts_enter_after_the_positions_before_ln_pre(clip, images):
    """docs/methods.md, "Conventions": vision prompts are appended to [CLS, patches] after the
    positional embedding (they get none) and before ln_pre, then overwritten before block i."""
    torch.manual_seed(3)
    p0, p1 = torch.randn(2, 128), torch.randn(2, 128)
    step = static_step(vision=[p0, p1])
    v, _ = run_towers(clip, images, step=step, depth=2)
    vis = clip.visual
    x = vis.ln_pre(torch.cat([vis.embed(images), p0.expand(len(images), -1, -1)], dim=1))
    x = vis.transformer.resblocks[0](x)
    x = vis.transformer.resblocks[1](torch.cat([x[:, :-2], p1.expand(len(images), -1, -1)], dim=1))
    x = vis.transformer.resblocks[2](x)
    torch.testing.assert_close(v, x)


def test_parameter_counts_at_vit_b16():
    """The numbers docs/methods.md pins ("The family", "DCP", "MuDPT") at ViT-B/16 widths (a
    meta-device CLIP: shapes only, no memory)."""
    with torch.device("meta"):
        clip = CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)
    names = ["a", "b", "c"]
    count = lambda name, **o: build_method(config_from_dict(
        {"method": {"name": name, **o}}).method, clip, names).num_trainable()
    assert count("maple") == 3_555_072
    assert sum(p.numel() for p in CMPABlock(512, 768).parameters()) == 11_027_968
    assert count("dcp", variant="released") == 11_048_448
    assert count("dcp") == 11_048_448
    assert count("dcp", share=False) == 9 * 11_027_968 + 16 * (512 + 768)   # blocks 1..P-1
    assert count("mudpt", variant="released") == 1_204_736
    assert count("mudpt") == 4_226_816
    # CoCoOp: ctx (4, 512) and the meta-net Linear(512, 512 // 16) - ReLU - Linear(32, 512)
    assert count("cocoop") == 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512) == 35_360


def test_cmpa_block_computes_the_equations_of_docs_methods():
    """docs/methods.md, "DCP": v' = v + MHA_v(q=LN1_v(W_t2v t), k=v=LN1_v(v)), then
    v' + MLP_v(LN2_v(v')) (and the mirror for t), recomputed here from the raw weights with
    scaled dot-product attention of 64-wide heads."""
    torch.manual_seed(0)
    blk = CMPABlock(128, 192).eval()
    for p in blk.parameters():                   # LayerNorms away from their identity init
        p.data.normal_(0, 0.2)
    ln = lambda x, m: F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)

    def mha(q, kv, attn):                        # (B, n, D): heads of 64, softmax(QK^T / 8) V
        d = q.shape[-1]
        wq, wk, wv = attn.in_proj_weight.split(d)
        bq, bk, bv = attn.in_proj_bias.split(d)
        heads = lambda x: x.unflatten(-1, (d // 64, 64)).transpose(1, 2)
        a = torch.softmax(heads(q @ wq.T + bq) @ heads(kv @ wk.T + bk).transpose(-1, -2) / 8, -1)
        out = (a @ heads(kv @ wv.T + bv)).transpose(1, 2).flatten(-2)
        return out @ attn.out_proj.weight.T + attn.out_proj.bias

    def mlp(x, m):
        h = x @ m.c_fc.weight.T + m.c_fc.bias
        return (h * torch.sigmoid(1.702 * h)) @ m.c_proj.weight.T + m.c_proj.bias

    v, t = torch.randn(3, 4, 192), torch.randn(1, 4, 128)
    want_v = v + mha(ln(t @ blk.t2v.weight.T + blk.t2v.bias, blk.ln_1_v).expand(3, -1, -1),
                     ln(v, blk.ln_1_v), blk.attn_v)
    want_v = want_v + mlp(ln(want_v, blk.ln_2_v), blk.mlp_v)
    want_t = t + mha(ln(v[:1] @ blk.v2t.weight.T + blk.v2t.bias, blk.ln_1_t), ln(t, blk.ln_1_t),
                     blk.attn_t)
    want_t = want_t + mlp(ln(want_t, blk.ln_2_t), blk.mlp_t)
    with torch.no_grad():
        torch.testing.assert_close(blk.vision(v, t), want_v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(blk.text(t, v[:1]), want_t, rtol=1e-5, atol=1e-5)


def test_widths_come_from_the_checkpoint():
    """A ViT-L/14-shaped model: 24 vision blocks of width 1024, text 768, E 768."""
    with torch.device("meta"):
        clip = CLIP(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12)
    model = build_method(config_from_dict({"method": {"name": "dcp"}}).method, clip, ["x"])
    assert model.vision_ctx.shape == (16, 1024) and model.ctx.shape == (16, 768)
    assert model.fusion.blocks[0].attn_v.num_heads == 16
    mudpt = build_method(config_from_dict({"method": {"name": "mudpt"}}).method, clip, ["x"])
    assert mudpt.fusion.encoder.self_attn.num_heads == 12


def test_bad_options_name_the_key(clip):
    with pytest.raises(ConfigError, match="method.depht"):
        config_from_dict({"method": {"name": "dcp", "depht": 3}})
    with pytest.raises(ConfigError, match="method.n_ctx"):
        config_from_dict({"method": {"name": "dcp", "n_ctx": "many"}})
    with pytest.raises(ConfigError, match="fusing"):
        config_from_dict({"method": {"name": "dcp", "fusing": "median"}})
    with pytest.raises(ConfigError, match="unknown method 'dcpp'.*coop.*dcp"):
        config_from_dict({"method": {"name": "dcpp"}})
    with pytest.raises(ValueError, match="method.depth=13 but this CLIP's text tower has only 3 "
                                         "blocks: set method.depth=3"):
        make(clip, "dcp", depth=13)
    with pytest.raises(ConfigError, match="unknown fusion module 'nope'.*cmpa"):
        make(clip, "maple", fusion="nope")
    with pytest.raises(ConfigError, match="fusion 'cmpa' does not support method 'maple'"):
        make(clip, "maple", fusion="cmpa")           # MaPLe owns no visual prompts
    with pytest.raises(ConfigError, match="method.depth"):
        make(clip, "dcp", depth=0)


def test_resnet_clip_runs_text_methods_and_rejects_visual_prompts():
    torch.manual_seed(0)
    clip = CLIP(64, 64, (1, 1, 1, 1), 16, None, 77, 49408, 64, 1, 2).eval()
    model = build_method(config_from_dict({"method": {"name": "coop"}}).method, clip, ["a", "b"])
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    with pytest.raises(ValueError, match="ResNet image tower"):
        build_method(config_from_dict({"method": {"name": "maple"}}).method, clip, ["a", "b"])


@pytest.mark.parametrize("case", ["coop", "maple", "dcp", "cocoop"])
def test_activation_checkpointing_gives_the_same_gradients(clip, images, case, monkeypatch):
    import torch.utils.checkpoint
    calls, real = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    grads = []
    for flag in (False, True):
        model = make(clip, case, {"checkpointing": flag}).train()
        before = len(calls)
        F.cross_entropy(model(images), torch.arange(6) % len(CLASSNAMES)).backward()
        assert (len(calls) > before) is flag               # blocks really are checkpointed
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)


def test_maple_deep_projections_start_as_copies_of_one_linear(clip):
    """Released MaPLe: `compound_prompt_projections = _get_clones(single_layer, depth - 1)`,
    so every deep projection starts with the same weights; `proj` has its own init."""
    torch.manual_seed(0)
    model = make(clip, "maple", depth=3)
    first, *deep = model.fusion.proj
    assert len(deep) == 2
    assert all(torch.equal(d.weight, deep[0].weight) and torch.equal(d.bias, deep[0].bias) for d in deep)
    assert not torch.equal(first.weight, deep[0].weight)
    assert deep[0].weight.data_ptr() != deep[1].weight.data_ptr()   # copies, trained apart


def test_init_words_read_underscores_as_spaces():
    from dcp.prompting import init_words, prompt_prefix
    assert init_words("a_photo_of_a") == ["a", "photo", "of", "a"] == init_words(" a photo  of a")
    assert prompt_prefix(4, "a_photo_of_a") == prompt_prefix(4, "a photo of a")
