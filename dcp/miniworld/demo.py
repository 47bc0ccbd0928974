"""The offline demo on the mini world: zero-shot CLIP, then few-shot prompt learning.

`python run.py --cfg configs/demo.yaml` (`demo: true`) calls `prepare_demo(cfg)` before its
runs. It points the config at the shipped pre-trained mini-world CLIP, generates the task into
`<output>/data/` if it is absent, and runs zero-shot CLIP on it (run folder
`<output>/fewshot/<task>/zeroshot/shots0/seed<S>`); run.py then trains and evaluates the
configured method (DCP) in its own run folder, and `report_demo` logs both accuracies (recorded in
their `metrics.json`; `python run.py aggregate <output>` shows them side by side).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist

from ..config import Config, ConfigError, config_from_dict, to_dict
from .data import TASKS, make_data

log = logging.getLogger(__name__)

NOTE = ("DEMO: mini world: a tiny CLIP pre-trained on generated pictures of shapes "
        "(dcp/miniworld); the accuracies are about that world, not about real images")


def zero_shot_config(cfg: Config) -> Config:
    """`cfg` with zero-shot CLIP as the method (nothing trained, no shots)."""
    data = to_dict(cfg)
    data.update(demo=False, method={"name": "zeroshot"})
    data["data"]["shots"] = 0
    return config_from_dict(data)


def prepare_demo(cfg: Config) -> None:
    """Resolve the demo's CLIP and data in `cfg` (in place) and run zero-shot CLIP first.

    `clip: miniworld` (or `demo`, or empty) is the shipped checkpoint; `data.dataset` defaults to
    `miniworld_shapes_sketch`, `data.root` to `<output>/data`, generated there when absent.
    """
    from ..experiment import clip_source
    cfg.clip = clip_source("miniworld" if cfg.clip in ("", "demo") else cfg.clip)
    cfg.data.dataset = cfg.data.dataset or "miniworld_shapes_sketch"
    if cfg.data.dataset not in TASKS:
        raise ConfigError(f"data.dataset: the demo runs on a mini-world task "
                          f"({', '.join(TASKS)}), not {cfg.data.dataset!r}")
    cfg.data.root = cfg.data.root or str(Path(cfg.output or "output") / "data")
    make_data(cfg.data.root, [cfg.data.dataset])
    log.warning("%s", NOTE)
    if dist.is_available() and dist.is_initialized():
        log.info("demo under several processes: skipping the zero-shot run")
        return
    from ..experiment import RunOptions, run_all
    zs = zero_shot_config(cfg)
    run_all(zs, RunOptions(), seeds=[zs.seed], shots=[0])
    log.info("DEMO: zero-shot CLIP: %.2f%% on %s; now %s with %d shots per class (it should "
             "do better)", _accuracy(zs), cfg.data.dataset, cfg.method.name, cfg.data.shots)


def _accuracy(cfg: Config) -> float:
    from ..experiment import run_folder
    doc = json.loads((run_folder(cfg) / "metrics.json").read_text(encoding="utf-8"))
    return doc["summary"]["accuracy"]


def report_demo(cfg: Config, runs) -> None:
    """Log zero-shot (run by `prepare_demo` for `cfg`) against each trained run of the demo."""
    if dist.is_available() and dist.is_initialized():
        return
    zero_shot = _accuracy(zero_shot_config(cfg))
    for run in runs:
        log.info("DEMO: %s: zero-shot CLIP %.2f%%, %s with %d shots %.2f%% (seed %d)",
                 run.data.dataset, zero_shot, run.method.name, run.data.shots, _accuracy(run), run.seed)
