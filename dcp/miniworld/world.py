"""The mini world's pictures of one object each, with captions (README, "Mini world"):

    scene = sample_scene(rng, domain="photo")      # a dict of attributes (see `sample_scene`)
    image = render(scene, rng)                     # PIL RGB, SIZE x SIZE
    text = caption(scene, rng)                     # "a photo of a small red striped circle."

Two domains: `photo` (a filled, coloured object on a background) and `sketch` (a pencil outline
on paper: patterns become hatching; colour and background are not drawn). Everything random comes
from the `random.Random` passed in (Pillow draws deterministically), so a seed fixes every pixel
and every word.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Tuple

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = 32           # image side in pixels (drawn at 2x and downsampled, for anti-aliasing)
_S = 2 * SIZE

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "crescent", "arrow")
COLOURS = {"red": (215, 40, 40), "orange": (240, 140, 30), "yellow": (235, 210, 40),
           "green": (50, 165, 60), "blue": (40, 80, 215), "purple": (135, 60, 185),
           "pink": (240, 135, 185), "brown": (125, 80, 40)}
PATTERNS = ("plain", "striped", "dotted", "checkered")
SIZES = ("small", "large")
# background -> grey-level range of its base colour
BACKGROUNDS = {"white": (215, 250), "black": (5, 50), "grey": (105, 160), "cluttered": (60, 200)}
DOMAINS = ("photo", "sketch")
RADIUS = {"small": (0.28, 0.34), "large": (0.38, 0.46)}   # object radius / canvas side, by size
CLUTTER = 3                                                # strokes on a cluttered background


def sample_scene(rng: random.Random, domain: str = "photo", shape: Optional[str] = None,
                 colour: Optional[str] = None) -> Dict[str, object]:
    """Attributes of one picture; `shape` / `colour` fix those attributes (the rest is random).

    Keys: domain, shape, colour, pattern, size, background, cx, cy, r (pixels on the 2x
    canvas), rotation (radians), position ("in the middle", "on the left", ...).
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    size = rng.choice(SIZES)
    r = _S * rng.uniform(*RADIUS[size])
    cx, cy = (rng.uniform(r + 2, _S - r - 2) for _ in range(2))
    dx, dy = cx - _S / 2, cy - _S / 2
    if max(abs(dx), abs(dy)) < 0.1 * _S:
        position = "in the middle"
    elif abs(dx) >= abs(dy):
        position = "on the left" if dx < 0 else "on the right"
    else:
        position = "at the top" if dy < 0 else "at the bottom"
    return {"domain": domain, "shape": shape or rng.choice(SHAPES),
            "colour": colour or rng.choice(list(COLOURS)), "pattern": rng.choice(PATTERNS),
            "size": size, "background": rng.choice(list(BACKGROUNDS)), "cx": cx, "cy": cy,
            "r": r, "rotation": rng.uniform(-0.3, 0.3), "position": position}


def _rotate(pts: List[Tuple[float, float]], cx: float, cy: float, rot: float):
    """`pts` (around the origin) turned by `rot` radians and moved to (cx, cy)."""
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


# shape -> (vertices n, radius of vertex k as radii[k % len(radii)] * r, angle of vertex 0)
POLYGONS = {"square": (4, (1.15,), -math.pi / 4), "triangle": (3, (1.15,), -math.pi / 2),
            "star": (10, (1.15, 0.48), -math.pi / 2)}


def shape_mask(shape: str, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    """The object's silhouette: an `L` image of the 2x canvas, 255 inside the shape."""
    mask = Image.new("L", (_S, _S), 0)
    d = ImageDraw.Draw(mask)
    if shape in ("circle", "crescent"):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "crescent":             # minus a smaller circle shifted along `rot`
            ox, oy = cx + 0.45 * r * math.cos(rot), cy + 0.45 * r * math.sin(rot)
            d.ellipse((ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r), fill=0)
        return mask
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 16.5, (y + 2) * r / 16.5))
    elif shape == "arrow":
        arrow = [(1, 0), (0.1, -0.8), (0.1, -0.32), (-1, -0.32), (-1, 0.32), (0.1, 0.32), (0.1, 0.8)]
        pts = [(x * r, y * r) for x, y in arrow]
        rot -= math.pi / 2                  # drawn pointing right, shown pointing up
    elif shape == "cross":
        w = 0.36
        arm = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
               (-1, -w), (-w, -w), (-w, -1)]
        pts = [(x * r * 0.9, y * r * 0.9) for x, y in arm]
    else:
        n, radii, start = POLYGONS[shape]
        pts = []
        for k in range(n):
            a, rk = start + 2 * math.pi * k / n, r * radii[k % len(radii)]
            pts.append((rk * math.cos(a), rk * math.sin(a)))
    d.polygon(_rotate(pts, cx, cy, rot), fill=255)
    return mask


def _jitter(rgb: Tuple[int, int, int], rng: random.Random, amount: int) -> Tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _pattern(pattern: str, ink: Tuple[int, int, int], rng: random.Random,
             lines: int = 4) -> Tuple[Image.Image, Image.Image]:
    """(ink layer RGB, where-to-ink mask L) of a fill pattern over the whole 2x canvas."""
    layer = Image.new("RGB", (_S, _S), ink)
    where = Image.new("L", (_S, _S), 0)
    d = ImageDraw.Draw(where)
    step = rng.randint(7, 10)
    off = rng.randint(0, step - 1)
    if pattern == "striped":
        slope = rng.choice((0, 1, -1))
        for k in range(-_S, 2 * _S, step):
            x = k + off
            d.line([(x, 0), (x + slope * _S, _S)] if slope else [(0, x), (_S, x)], fill=255, width=lines)
    elif pattern == "dotted":
        for y in range(off, _S, step):
            for x in range(off + (step // 2) * ((y // step) % 2), _S, step):
                d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=255)
    elif pattern == "checkered":
        for y in range(0, _S, step):
            for x in range(0, _S, step):
                if (x // step + y // step) % 2:
                    d.rectangle((x + off, y + off, x + off + step - 1, y + off + step - 1), fill=255)
    return layer, where


def _clutter(im: Image.Image, rng: random.Random) -> None:
    d = ImageDraw.Draw(im)
    for _ in range(CLUTTER):
        x, y = rng.uniform(0, _S), rng.uniform(0, _S)
        w = rng.uniform(3, 10)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        if rng.random() < 0.5:
            d.line([(x, y), (x + rng.uniform(-w, w), y + rng.uniform(-w, w))], fill=colour, width=2)
        else:
            d.ellipse((x, y, x + w / 2, y + w / 2), fill=colour)


def render(scene: Dict[str, object], rng: random.Random) -> Image.Image:
    """Draw `scene` (from `sample_scene`): an RGB image SIZE x SIZE."""
    mask = shape_mask(scene["shape"], scene["cx"], scene["cy"], scene["r"], scene["rotation"])
    if scene["domain"] == "photo":
        base = rng.randint(*BACKGROUNDS[scene["background"]])
        im = Image.new("RGB", (_S, _S), _jitter((base, base, base), rng, 15))
        if scene["background"] == "cluttered":
            _clutter(im, rng)
        colour = _jitter(COLOURS[scene["colour"]], rng, 22)
        obj = Image.new("RGB", (_S, _S), colour)
        ink = tuple(int(c * 0.55) for c in colour) if sum(colour) > 300 else \
            tuple(min(255, int(c * 0.6 + 90)) for c in colour)
        layer, where = _pattern(scene["pattern"], ink, rng)
        obj.paste(layer, mask=where)
        im.paste(obj, mask=mask)
        blur, noise = rng.uniform(0.0, 0.6), rng.uniform(0.03, 0.09)
    else:
        im = Image.new("RGB", (_S, _S), _jitter((240, 236, 226), rng, 12))      # paper
        pencil = _jitter((45, 45, 50), rng, 25)
        layer, where = _pattern(scene["pattern"], pencil, rng, lines=1)
        im.paste(layer, mask=ImageChops.multiply(where, mask.filter(ImageFilter.MinFilter(5))))
        outline = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(3)),
                                      mask.filter(ImageFilter.MinFilter(3)))
        im.paste(Image.new("RGB", (_S, _S), pencil), mask=outline)
        blur, noise = rng.uniform(0.2, 0.7), rng.uniform(0.03, 0.08)
    im = im.filter(ImageFilter.GaussianBlur(blur)).resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=None)
    grain = Image.frombytes("RGB", (SIZE, SIZE), rng.randbytes(SIZE * SIZE * 3))
    return Image.blend(im, grain, noise)


# Caption templates of pre-training; {} is the object description. The benchmark prompts
# ("a photo of a {class}.") are one of these with most attributes left out.
PHOTO_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "{}.",
                   "there is {}.", "a rendering of {}.", "a close-up photo of {}.")
SKETCH_TEMPLATES = ("a sketch of {}.", "a drawing of {}.", "a pencil sketch of {}.",
                    "a line drawing of {}.", "a doodle of {}.")
# How often each attribute besides the shape is named in a pre-training caption.
MENTION = {"size": 0.5, "colour": 0.6, "pattern": 0.5, "position": 0.25, "background": 0.25}


def caption(scene: Dict[str, object], rng: random.Random, detail: float = 1.0,
            whole: bool = True) -> str:
    """A pre-training caption of `scene`, e.g. "a photo of a small red striped circle on the left
    on a black background.": a random template around the shape and each other attribute with
    probability `detail * MENTION[attribute]`; size and position only for the `whole` picture
    (not for a random crop of it), colour and background only for photos."""
    photo = scene["domain"] == "photo"
    template = rng.choice(PHOTO_TEMPLATES if photo else SKETCH_TEMPLATES)
    unseen = set() if whole else {"size", "position"}
    if not photo:
        unseen |= {"colour", "background"}
    named = {a: rng.random() < detail * p and a not in unseen for a, p in MENTION.items()}
    text = " ".join([scene[a] for a in ("size", "colour", "pattern") if named[a]] + [scene["shape"]])
    if named["position"]:
        text += " " + scene["position"]
    if named["background"]:
        text += f" on a {scene['background']} background"
    return template.format(("an " if text[0] in "aeiou" else "a ") + text)
