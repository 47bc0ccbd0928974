"""Contrastive pre-training of a tiny CLIP on the mini world (README, "Mini world"):

    python -m dcp.miniworld pretrain --out miniworld-clip.pt --seed 0

OpenAI's CLIP (`dcp.clip.model.CLIP`) at a tiny size, with the real tokenizer, trained as CLIP
was: the symmetric InfoNCE loss over each batch of freshly generated (image, caption) pairs, with
a learnable temperature clamped to exp(logit_scale) <= 100. The result is an OpenAI-format fp16
state dict that `dcp.clip.load` reads like any CLIP checkpoint, with a JSON record beside it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..clip import load
from ..clip.model import CLIP
from ..clip.tokenizer import tokenize
from ..data.transforms import build_transform
from ..utils import Progress, atomic_torch_save, atomic_write_text, sha256_file
from .data import TASKS, task_images
from .world import SIZE, caption, render, sample_scene

log = logging.getLogger(__name__)

# Joint width E = text width, so every method variant runs (MuDPT `released` needs E == Dt);
# heads = width // 64. Width 64 with 4 x 4 patches (an 8 x 8 grid) learns shapes far faster on
# a CPU than width 128 with 8 x 8 patches; the 49408 x 64 token embedding is most of the file.
ARCH = dict(embed_dim=64, image_resolution=SIZE, vision_layers=4, vision_width=64,
            vision_patch_size=4, context_length=77, vocab_size=49408, transformer_width=64,
            transformer_heads=1, transformer_layers=4)


def option(default, help: str):
    """A `Settings` field that `python -m dcp.miniworld pretrain` takes as an option."""
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    seed: int = option(0, "seed of weights and data")
    steps: int = option(1600, "optimiser steps")
    batch_size: int = option(128, "pairs per step")
    lr: float = option(2e-3, "peak AdamW learning rate")
    warmup: int = 30              # linear warm-up steps, then cosine decay to 0
    weight_decay: float = 0.1     # on weight matrices only
    sketch_fraction: float = option(0.25, "share of sketch-domain pairs")
    crop_fraction: float = option(0.25, "share of pairs seen through a random crop and flip")
    curriculum: float = option(0.35, "share of the steps whose captions name the shape only")
    eval_every: int = option(200, "zero-shot evaluation every N steps, 0 = only at the end")


def training_batch(settings: Settings, step: int) -> Tuple[Tensor, Tensor]:
    """Batch `step` of pre-training: images (B, 3, SIZE, SIZE), caption tokens (B, L)."""
    rng = random.Random(f"miniworld-pretrain:{settings.seed}:{step}")
    whole, cropped = build_transform(False, SIZE), build_transform(True, SIZE)
    detail = float(step >= settings.curriculum * settings.steps)
    images, texts = [], []
    with torch.random.fork_rng(devices=[]):           # the crops' randomness, from the step
        torch.manual_seed(settings.seed * 1_000_003 + step)
        for _ in range(settings.batch_size):
            scene = sample_scene(rng, "sketch" if rng.random() < settings.sketch_fraction else "photo")
            crop = rng.random() < settings.crop_fraction
            images.append((cropped if crop else whole)(render(scene, rng)))
            texts.append(caption(scene, rng, detail, whole=not crop))
    # cut to the longest EOS + 1: the causal text mask keeps padding out of the EOS feature
    tokens = tokenize(texts)
    return torch.stack(images), tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]


class ZeroShotSets:
    """The benchmarks' test images, rendered once: {task: (images (N, 3, S, S), labels (N,))}."""

    def __init__(self):
        to_tensor = build_transform(False, SIZE)
        self.sets = {}
        for name, task in TASKS.items():
            items = list(task_images(task, "test"))
            self.sets[name] = (torch.stack([to_tensor(im) for _, _, im in items]),
                               torch.tensor([label for _, label, _ in items]))

    @torch.no_grad()
    def accuracy(self, model: CLIP) -> Dict[str, float]:
        """Zero-shot top-1 accuracy (%) per task, one prompt "a photo of a {class}." per class."""
        model.eval()
        out = {}
        for name, (images, labels) in self.sets.items():
            prompts = tokenize([f"a photo of a {c}." for c in TASKS[name].classnames])
            text = F.normalize(model.encode_text(prompts), dim=-1)
            pred = (F.normalize(model.encode_image(images), dim=-1) @ text.t()).argmax(dim=-1)
            out[name] = round(100.0 * float((pred == labels).float().mean()), 2)
        return out


def lr_at(step: int, s: Settings) -> float:
    """Linear warm-up over `s.warmup` steps, then cosine decay to 0."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    return 0.5 * s.lr * (1 + math.cos(math.pi * (step - s.warmup) / max(1, s.steps - s.warmup)))


def pretrain(s: Settings, evaluator: ZeroShotSets) -> Tuple[CLIP, List[dict]]:
    """Train a tiny CLIP from scratch; returns it (eval mode) and the history of evaluated steps."""
    torch.manual_seed(s.seed)
    model = CLIP(**ARCH)
    decay, no_decay = [], []            # AdamW's weight decay: not on gains, biases, embeddings
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embedding" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.98), eps=1e-6)
    history = []
    bar = Progress(range(s.steps), desc="pre-training")
    for step in bar:
        images, tokens = training_batch(s, step)
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        logits_per_image, logits_per_text = model(images, tokens)
        target = torch.arange(len(images))           # pair i: the positive of row i and of column i
        loss = (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_text, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set(loss=loss.item(), scale=model.logit_scale.exp().item())
        done = step + 1
        if s.eval_every and (done % s.eval_every == 0 or done == s.steps):
            acc = evaluator.accuracy(model)
            history.append({"step": done, "loss": round(loss.item(), 4), "zero_shot": acc})
            log.info("step %d/%d: loss %.3f, logit scale %.1f, zero-shot %s", done, s.steps,
                     loss.item(), model.logit_scale.exp().item(), acc)
    return model.eval(), history


def run(out: Path, s: Settings, command: str = "", threads: int = 2) -> dict:
    """Pre-train, evaluate zero-shot and write `out` (checkpoint) and `out` with `.json`."""
    torch.set_num_threads(threads)
    out = Path(out)
    evaluator = ZeroShotSets()
    wall, cpu = time.time(), time.process_time()
    model, history = pretrain(s, evaluator)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    # OpenAI's keys, every tensor fp16 as in OpenAI's files (`dcp.clip.load` casts back)
    atomic_torch_save({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, out)
    loaded, _ = load(out, device="cpu")             # what users get: the fp16 weights read back
    record = {
        "command": command or f"python -m dcp.miniworld pretrain --out {out} --seed {s.seed}",
        "settings": dataclasses.asdict(s), "architecture": ARCH,
        "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "zero_shot": evaluator.accuracy(loaded),
        "chance": {n: round(100.0 / len(t.classes), 2) for n, t in TASKS.items()},
        "logit_scale": round(float(loaded.logit_scale.exp()), 2),
        "file": out.name, "bytes": out.stat().st_size, "sha256": sha256_file(out),
        "history": history,
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    log.info("wrote %s (%.1f MB) in %.0f s (%.0f CPU s): zero-shot %s", out,
             record["bytes"] / 1e6, wall, cpu, record["zero_shot"])
    return record
