"""CLIP, written for this project; parameter names and shapes are exactly OpenAI's.

Towers are batch-first: every transformer block maps (B, L, D) -> (B, L, D), and the blocks
are exposed (`visual.transformer.resblocks`, `transformer.resblocks`) so prompt tokens can be
inserted from outside (see `dcp.prompting`) without a fork of this file per method.

    model = build_model(state_dict)          # every hyper-parameter read from the state dict
    f_img = model.encode_image(images)       # (B, 3, R, R) -> (B, E)
    f_txt = model.encode_text(tokens)        # (C, 77) int64 -> (C, E)
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

_FUSED_ATTENTION = True


@contextmanager
def fused_attention(enabled: bool):
    """Switch `F.scaled_dot_product_attention` on or off (off = the plain softmax math)."""
    global _FUSED_ATTENTION
    old, _FUSED_ATTENTION = _FUSED_ATTENTION, enabled
    try:
        yield
    finally:
        _FUSED_ATTENTION = old


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (OpenAI's fp16 convention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return super().forward(x)
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                         self.bias.float(), self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter names, batch-first.

    x: (B, L, D) -> (B, L, D). `causal` masks future positions (the text tower).
    """

    def __init__(self, d_model: int, n_head: int, causal: bool = False):
        super().__init__()
        self.n_head, self.causal = n_head, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        if _FUSED_ATTENTION:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.n_head)
            if self.causal:
                future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
                att = att.masked_fill(future, float("-inf"))
            y = att.softmax(dim=-1) @ v
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1 x), then x + mlp(ln_2 x). (B, L, D) -> same."""

    def __init__(self, d_model: int, n_head: int, causal: bool = False):
        super().__init__()
        self.attn = Attention(d_model, n_head, causal)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: (B, 3, R, R) -> (B, output_dim)."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int,
                 heads: int, output_dim: int):
        super().__init__()
        self.input_resolution, self.output_dim, self.patch_size = input_resolution, output_dim, patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        grid = input_resolution // patch_size
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with [CLS] first and the positional embedding added: (B, 1+N, D).

        Images of another size than `input_resolution` get a bicubically resized grid.
        """
        x = self.conv1(images.to(self.conv1.weight.dtype))            # (B, D, g, g)
        B, D, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)                                # (B, N, D)
        cls = self.class_embedding.to(x.dtype).expand(B, 1, D)
        return torch.cat([cls, x], dim=1) + self._pos_embedding(gh, gw).to(x.dtype)

    def _pos_embedding(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.positional_embedding
        g = int(round(math.sqrt(pos.shape[0] - 1)))
        if (gh, gw) == (g, g):
            return pos
        grid = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)
        return torch.cat([pos[:1], grid], dim=0)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens (B, L, D) -> image features (B, output_dim) from [CLS]."""
        return self.ln_post(x[:, 0]) @ self.proj

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(self.ln_pre(self.embed(images))))


class Bottleneck(nn.Module):
    """ResNet-D bottleneck: strided convolutions replaced by an average pool."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * 4, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token queries all spatial tokens. (B, C, H, W) -> (B, out)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)                                # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)          # (B, 1+HW, C)
        x = x + self.positional_embedding.to(x.dtype)
        B, L, C = x.shape
        h = self.num_heads
        q = self.q_proj(x[:, :1]).view(B, 1, h, C // h).transpose(1, 2)
        k = self.k_proj(x).view(B, L, h, C // h).transpose(1, 2)
        v = self.v_proj(x).view(B, L, h, C // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)                     # (B, h, 1, C/h)
        return self.c_proj(y.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet image tower: 3-conv stem, anti-aliased strides, attention pooling."""

    def __init__(self, layers: Tuple[int, ...], output_dim: int, heads: int,
                 input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class CLIP(nn.Module):
    def __init__(self, embed_dim: int, image_resolution: int,
                 vision_layers: Union[Tuple[int, int, int, int], int], vision_width: int,
                 vision_patch_size: Optional[int], context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.context_length, self.vocab_size = context_length, vocab_size
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(tuple(vision_layers), embed_dim, vision_width * 32 // 64,
                                         image_resolution, vision_width)
        else:
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width,
                                            vision_layers, vision_width // 64, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       causal=True)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """CLIP's initialisation (used only for models trained from scratch)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(lin.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, p in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(p)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, E)."""
        return self.visual(images.to(self.dtype))

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (C, L) -> token embeddings plus positions (C, L, Dt); any L <= context."""
        x = self.token_embedding(tokens).to(self.dtype)
        return x + self.positional_embedding[: tokens.shape[1]].to(self.dtype)

    def text_head(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Final tokens (C, L, Dt) and EOS positions (C,) -> text features (C, E)."""
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (C, L) -> (C, E); the EOS token (largest id) gives the feature."""
        return self.text_head(self.transformer(self.embed_text(tokens)), tokens.argmax(dim=-1))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """OpenAI's contract: (logits_per_image (B, C), logits_per_text (C, B))."""
        f_img = F.normalize(self.encode_image(images), dim=-1)
        f_txt = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * f_img @ f_txt.t()
        return logits, logits.t()


def convert_weights(model: nn.Module) -> None:
    """Cast linear, conv, attention and projection weights to fp16 in place (OpenAI's
    convention on CUDA); LayerNorm and BatchNorm stay fp32."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data = m.weight.data.half()
            if m.bias is not None:
                m.bias.data = m.bias.data.half()
        if isinstance(m, Attention):
            m.in_proj_weight.data = m.in_proj_weight.data.half()
            m.in_proj_bias.data = m.in_proj_bias.data.half()
    for name in ("text_projection", "proj"):
        for m in model.modules():
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter):
                p.data = p.data.half()


_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def build_model(state_dict: Dict[str, torch.Tensor]) -> CLIP:
    """Build CLIP from an OpenAI state dict, every hyper-parameter inferred from the shapes.

    Loads strictly (fp32; the caller casts). Raises ValueError when keys are missing or extra.
    """
    sd = {k: v for k, v in state_dict.items() if k not in _NOT_WEIGHTS}
    if "visual.proj" in sd:                                              # ViT
        vision_width = sd["visual.conv1.weight"].shape[0]
        vision_layers = len({k.split(".")[3] for k in sd
                             if k.startswith("visual.transformer.resblocks.")})
        vision_patch_size = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = vision_patch_size * grid
    elif "visual.attnpool.positional_embedding" in sd:                   # ModifiedResNet
        vision_layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                              for b in (1, 2, 3, 4))
        vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_patch_size, image_resolution = None, grid * 32
    else:
        raise ValueError("not a CLIP state dict: neither 'visual.proj' (ViT) nor "
                         "'visual.attnpool.positional_embedding' (ResNet) is present")
    embed_dim = sd["text_projection"].shape[1]
    context_length = sd["positional_embedding"].shape[0]
    vocab_size = sd["token_embedding.weight"].shape[0]
    width = sd["ln_final.weight"].shape[0]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    with torch.device("meta"):
        model = CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                     context_length, vocab_size, width, width // 64, layers)
    missing = sorted(set(model.state_dict()) - set(sd))
    unexpected = sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the inferred CLIP architecture: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    # own copies in fp32: the model never shares memory with the caller's tensors
    model.load_state_dict({k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone()
                           for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()
