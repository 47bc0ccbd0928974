"""dcp.clip.model.build_model against OpenAI's reference: hyper-parameters of all 9 published
architectures (shape-only, on the meta device) and features of tiny models at fp32 precision."""
import pytest
import torch

from conftest import OPENAI_ARCHITECTURES
from dcp.clip import available_models
from dcp.clip.model import build_model, convert_weights, fused_attention


def test_architectures_cover_available_models():
    assert sorted(OPENAI_ARCHITECTURES) == sorted(available_models())


@pytest.mark.parametrize("name", list(OPENAI_ARCHITECTURES))
def test_build_model_infers_openai_architecture(name, openai_clip):
    arch = OPENAI_ARCHITECTURES[name]
    (embed_dim, resolution, vision_layers, vision_width, patch, context, vocab,
     text_width, text_heads, text_layers) = arch.values()
    with torch.device("meta"):                       # shapes only: no memory, no compute
        reference = openai_clip.model.CLIP(**arch)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    model = build_model(reference.state_dict())
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert model.visual.input_resolution == resolution and model.visual.output_dim == embed_dim
    assert (model.context_length, model.vocab_size) == (context, vocab)
    assert (model.transformer.width, model.transformer.layers) == (text_width, text_layers)
    assert model.transformer.resblocks[0].attn.n_head == text_heads
    assert model.transformer.resblocks[0].attn.causal
    if isinstance(vision_layers, tuple):
        stages = [model.visual.layer1, model.visual.layer2, model.visual.layer3, model.visual.layer4]
        assert tuple(len(s) for s in stages) == vision_layers
        assert model.visual.attnpool.num_heads == vision_width * 32 // 64
        assert model.visual.conv3.out_channels == vision_width
    else:
        assert model.visual.patch_size == patch
        assert model.visual.transformer.layers == vision_layers
        assert model.visual.transformer.width == vision_width
        assert model.visual.transformer.resblocks[0].attn.n_head == vision_width // 64
        assert not model.visual.transformer.resblocks[0].attn.causal


@pytest.mark.parametrize("arch,resolution", [("vit", 32), ("rn", 64)])
def test_tiny_model_matches_reference(arch, resolution, request, openai_clip):
    sd = request.getfixturevalue(f"tiny_{arch}_state_dict")
    reference = openai_clip.model.build_model(dict(sd)).float().eval()
    model = build_model(sd)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, resolution, resolution, generator=g)
    tokens = openai_clip.tokenize(["a photo of a dog.", "a diagram of a cat, long text " * 4])
    with torch.no_grad():
        ref_img, ref_txt = reference.encode_image(images), reference.encode_text(tokens)
        for fused in (True, False):
            with fused_attention(fused):
                img, txt = model.encode_image(images), model.encode_text(tokens)
            torch.testing.assert_close(img, ref_img, rtol=1e-5, atol=1e-5 * ref_img.abs().max().item())
            torch.testing.assert_close(txt, ref_txt, rtol=1e-5, atol=1e-5 * ref_txt.abs().max().item())
        logits, logits_t = model(images, tokens)
        ref_logits, _ = reference(images, tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-4)
    assert torch.equal(logits_t, logits.t())


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_fp16_weights_follow_openai_convention(arch, request, openai_clip):
    """convert_weights casts exactly the tensors OpenAI's convert_weights casts."""
    sd = request.getfixturevalue(f"tiny_{arch}_state_dict")
    model = build_model(sd)
    convert_weights(model)
    reference = openai_clip.model.build_model(dict(sd))
    ours = {k: v.dtype for k, v in model.state_dict().items()}
    theirs = {k: v.dtype for k, v in reference.state_dict().items()}
    assert ours == theirs
    assert model.dtype == torch.float16


def test_not_a_clip_state_dict_is_a_clear_error():
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        build_model({"weight": torch.zeros(2, 2)})
