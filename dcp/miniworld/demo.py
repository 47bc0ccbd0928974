"""The offline demo, `python run.py demo` (README, "First run: the offline demo"): zero-shot
CLIP, then few-shot training of the configured method, on a mini-world task. A client of the run
machinery: both runs are ordinary run folders under `<output>/`, so a second call finds them
finished and just reports them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Tuple

from ..config import Config, ConfigError, config_from_dict, to_dict
from ..experiment import Datasets, RunOptions, load_frozen_clip, resolve, run_all
from ..engine import setup_context
from ..rundir import RunFolder, read_metrics, run_folder
from .data import TASKS, make_data

log = logging.getLogger(__name__)

NOTE = ("mini world: a tiny CLIP pre-trained on generated pictures of shapes (dcp/miniworld); "
        "the accuracies are about that world, not about real images")


def _accuracy(cfg: Config) -> float:
    folder = RunFolder(run_folder(resolve(cfg, cfg.data.shots, cfg.seed)))
    return read_metrics(folder.metrics)["summary"]["accuracy"]


def run_demo(cfg: Config) -> Tuple[float, float]:
    """Run the demo for `cfg` (the trained method's config); returns (zero-shot, method) accuracy."""
    began = time.time()
    phase = lambda i, text: log.info("demo %d/4 (%.1fs): %s", i, time.time() - began, text)
    cfg.clip = cfg.clip or "miniworld"
    cfg.data.dataset = cfg.data.dataset or "miniworld_shapes_sketch"
    cfg.data.root = cfg.data.root or str(Path(cfg.output or "output") / "data")
    if cfg.data.dataset not in TASKS:
        raise ConfigError(f"data.dataset: the demo runs on a mini-world task "
                          f"({', '.join(TASKS)}), not {cfg.data.dataset!r}")
    phase(1, f"the task {cfg.data.dataset} in {cfg.data.root} ({NOTE})")
    make_data(cfg.data.root, [cfg.data.dataset])
    phase(2, f"loading CLIP {cfg.clip} and the data, once")
    clip, datasets = load_frozen_clip(cfg, setup_context(cfg.precision)), Datasets()
    as_dict = to_dict(cfg)              # zero-shot CLIP: nothing trained, no shots
    as_dict["method"] = {"name": "zeroshot"}
    as_dict["data"]["shots"] = 0
    zs = config_from_dict(as_dict)
    phase(3, "zero-shot CLIP")
    run_all(zs, RunOptions(), [zs.seed], [0], clip=clip, datasets=datasets)
    phase(4, f"{cfg.method.name} with {cfg.data.shots} shots per class")
    run_all(cfg, RunOptions(), [cfg.seed], [cfg.data.shots], clip=clip, datasets=datasets)
    zero_shot, trained = _accuracy(zs), _accuracy(cfg)
    log.info("demo done in %.1fs; the run folders are under %s", time.time() - began, cfg.output)
    method = f"{cfg.method.name.upper()}, {cfg.data.shots} shots per class:"
    print(f"{'zero-shot CLIP:':<{len(method)}} {zero_shot:6.2f}% on {cfg.data.dataset}\n"
          f"{method} {trained:6.2f}% ({trained - zero_shot:+.2f} points)")
    return zero_shot, trained
