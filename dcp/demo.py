"""The offline demo: a generated dataset of coloured shapes and a tiny untrained CLIP.

`python run.py --cfg configs/demo.yaml` runs the whole pipeline (few-shot draw, training,
checkpoints, evaluation, metrics) in about a minute on a CPU with no downloads. Both assets are
generated once into `<output>/assets/` and read through the real code paths: the images as a
`folder` dataset (train/ val/ test/ of class folders), the CLIP as an OpenAI-format state dict
loaded by `dcp.clip.load`. The CLIP's weights are random, so the numbers mean nothing.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import torch
from PIL import Image, ImageDraw

from .clip.model import CLIP
from .config import Config
from .utils import atomic_torch_save

log = logging.getLogger(__name__)

# class name -> (RGB colour, shape)
SHAPES: Dict[str, Tuple[Tuple[int, int, int], str]] = {
    "red_circle": ((220, 40, 40), "circle"),
    "green_square": ((40, 180, 60), "square"),
    "blue_triangle": ((50, 80, 220), "triangle"),
    "yellow_star": ((235, 200, 30), "star"),
}
PER_SPLIT = {"train": 16, "val": 4, "test": 20}
NOTE = ("DEMO: the CLIP weights are random (an untrained tiny model): the accuracies only show "
        "that the pipeline runs; they say nothing about any method")
# A tiny ViT CLIP: 32 px, patch 8, vision width 128 (2 heads), 2 blocks per tower, text width 64.
TINY = dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128,
            vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
            transformer_heads=1, transformer_layers=2)


def draw_shape(shape: str, colour: Tuple[int, int, int], rng: random.Random, size: int = 64) -> Image.Image:
    """One `size` x `size` RGB image: a jittered shape at a random place on a noisy background."""
    bg = tuple(rng.randint(60, 200) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    for _ in range(6):                           # clutter
        x, y = rng.randint(0, size), rng.randint(0, size)
        d.point((x, y), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    r = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        points = 3 if shape == "triangle" else 10
        turn = rng.uniform(0, 2 * math.pi)
        pts = []
        for k in range(points):
            rad = r if shape == "triangle" or k % 2 == 0 else r * 0.45
            a = turn + 2 * math.pi * k / points
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)
    return im


def make_shapes(folder: Path, seed: int = 0) -> Path:
    """Write the shapes dataset as `folder/{train,val,test}/<class>/*.png` (atomically)."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for split, n in PER_SPLIT.items():
            for cname, (colour, shape) in SHAPES.items():
                (tmp / split / cname).mkdir(parents=True)
                rng = random.Random(f"dcp-demo:{seed}:{split}:{cname}")
                for i in range(n):
                    draw_shape(shape, colour, rng).save(tmp / split / cname / f"{i:03d}.png")
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("generated the demo dataset in %s (%s)", folder,
             ", ".join(f"{k}: {v} per class" for k, v in PER_SPLIT.items()))
    return folder


def make_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny CLIP as an OpenAI-format state dict."""
    path = Path(path)
    if path.is_file():
        return path
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = CLIP(**TINY)
    torch.set_rng_state(state)
    atomic_torch_save(model.state_dict(), path)
    log.info("generated the demo's untrained tiny CLIP %s", path)
    return path


def prepare_demo(cfg: Config) -> None:
    """Generate the demo assets under `<output>/assets/` and point the config at them (unless
    `clip` / `data.root` are set to something else)."""
    assets = Path(cfg.output or "output") / "assets"
    if not cfg.clip or cfg.clip == "demo":
        cfg.clip = str(make_tiny_clip(assets / "tiny-clip-untrained.pt"))
    if not cfg.data.root:
        cfg.data.root = str(make_shapes(assets / "shapes"))
        cfg.data.dataset = "folder"
    log.warning("DEMO: %s is a tiny CLIP with random weights, not a trained model", cfg.clip)
