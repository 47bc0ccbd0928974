"""The road through a run: config -> data -> model -> training loop -> run folder -> metrics.

    setting = prepare(cfg, opts, shots=[16], seeds=[1, 2, 3], ctx=ctx)   # loaded, checked once
    for run in setting.runs:
        run_one(setting, run, opts)                   # one run folder (dcp.rundir)
    run_all(cfg, opts, seeds, shots)                  # both, as run.py does
"""
from __future__ import annotations

import contextlib
import copy
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .clip import CheckpointError, load as load_clip
from .clip.model import convert_weights
from .config import Config, ConfigError, config_text
from .data import (DatasetError, DatasetSplits, build_dataset, check_images, detect_dataset,
                   fewshot, subsample_classes)
from .data.fewshot import recorded_info
from .data.loader import steps_per_epoch
from .engine import (Context, classification_metrics, fit, predict, setup_context,
                     teardown_context)
from .methods import build_method
from .prompting import duplicate_classnames, prompt_classname
from .protocols import protocol
from .registry import DATASETS
from .released import find_checkpoint
from .rundir import (RunError, RunFolder, dataset_label, load_weights, method_tag, run_folder,
                     run_tag, setting_hash)
from .utils import sha256_file

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What to do with the run folders (command-line options, not part of the config)."""
    eval_only: bool = False
    model_dir: str = ""           # a trained run folder (or its final.pt) to evaluate
    load_released: str = ""       # a checkpoint of the authors' released code
    resume: bool = False
    force: bool = False
    stop_after: int = 0           # stop after this many epochs, as if killed (tests --resume)


# --------------------------------------------------------------------------- config and data
def resolve(cfg: Config, shots: int, seed: int) -> Config:
    """The config of one run: its shots and seed, the protocol's default test sets."""
    cfg = copy.deepcopy(cfg)
    cfg.seed, cfg.data.shots = seed, shots
    try:
        cfg.data.validate()                 # --shots bypasses the config file's checks
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    problem = protocol(cfg.protocol).check(cfg)
    if problem:
        raise ConfigError(problem)
    cfg.eval.datasets = list(cfg.eval.datasets) or list(protocol(cfg.protocol).targets)
    return cfg


def resolve_dataset(cfg: Config) -> None:
    """Fill `data.dataset` by recognising `data.root` when it is not named; make the data root
    and a CLIP checkpoint path absolute (saved configs then work from any folder)."""
    if not cfg.data.root:
        raise ConfigError("data.root: no data given; pass --data PATH (a data root or one "
                          "dataset's folder)")
    cfg.data.root = str(Path(cfg.data.root).expanduser().absolute())
    if Path(cfg.clip).expanduser().is_file():
        cfg.clip = str(Path(cfg.clip).expanduser().absolute())
    if not cfg.data.dataset:
        cfg.data.dataset, cfg.data.root = detect_dataset(cfg.data.root)
        log.info("recognised dataset %s in %s", cfg.data.dataset, cfg.data.root)
    for key, names in (("data.dataset", [cfg.data.dataset]), ("eval.datasets", cfg.eval.datasets)):
        for name in names:
            if name not in DATASETS:
                raise ConfigError(f"{key}: unknown dataset {name!r}; registered: "
                                  f"{', '.join(DATASETS.names())}")


def data_root(name: str, root: str) -> str:
    """The folder holding the dataset folders, also when `root` is dataset `name`'s own folder."""
    reader = DATASETS.get(name)(name)
    p = Path(root).expanduser()
    if reader.folder and not (p / reader.folder).is_dir() and (p.name == reader.folder
                                                                 or reader.detect(p)):
        return str(p.parent)
    return str(p)


class Datasets:
    """Datasets read once per invocation (listing ImageNet takes a while)."""

    def __init__(self):
        self._cache: Dict[Tuple[str, str, str], DatasetSplits] = {}

    def get(self, name: str, root: str, split_file: str = "") -> DatasetSplits:
        key = (name, root, split_file)
        if key not in self._cache:
            self._cache[key] = build_dataset(name, root, split_file=split_file)
        return self._cache[key]


def _check_classnames(split: DatasetSplits) -> None:
    """Class names equal in a prompt: an error, except those the published list repeats."""
    found = duplicate_classnames(split.classnames)
    known = [d for d in found if " ".join(prompt_classname(d[0]).lower().split()) in split.duplicates_ok]
    if known:
        log.warning("%s: the published class list names %s alike; only the first of each can be "
                    "predicted (as in the released code)", split.name,
                    ", ".join(f"{len(d)} classes {d[0]!r}" for d in known))
    duplicates = [d for d in found if d not in known]
    if duplicates:
        raise DatasetError(f"{split.name}: class names equal in a prompt (case, '_' and spaces "
                           f"ignored) could never be told apart: "
                           f"{' = '.join(repr(n[:60]) for n in duplicates[0][:3])}"
                           + (f" (and {len(duplicates) - 1} more)" if len(duplicates) > 1 else ""))


# --------------------------------------------------------------------------- model
def load_frozen_clip(cfg: Config, ctx: Context):
    """The frozen CLIP (rank 0 first, so a download happens once) in the context's dtype."""
    clip, _ = ctx.main_first(lambda: load_clip(cfg.clip, device=ctx.device))
    convert_weights(clip) if ctx.clip_dtype == torch.float16 else clip.float()
    return clip


def build(cfg: Config, clip, classnames: Sequence[str], template: str, **switches):
    """`build_method`, with a method that does not fit the CLIP reported as a config error."""
    switches.setdefault("checkpointing", cfg.optim.activation_checkpointing)
    try:
        return build_method(cfg.method, clip, classnames, template=template, **switches)
    except ValueError as e:
        raise ConfigError(f"method ({cfg.method.name}): {e}") from None


def per_class_keys(cfg: Config, clip, template: str) -> List[str]:
    """Trained tensors whose shape depends on the number of classes (e.g. CoOp class_specific
    ctx (C, n, D)), found by building the method for two and for three classes."""
    with torch.random.fork_rng(devices=[]):
        two = build(cfg, clip, ["a", "b"], template).trainable_state_dict()
        three = build(cfg, clip, ["a", "b", "c"], template).trainable_state_dict()
    return [k for k in two if k in three and two[k].shape != three[k].shape]


def class_index(source: DatasetSplits, target: DatasetSplits) -> Optional[List[int]]:
    """For each target class its label among the source classes, or None if not a subset:
    ImageNet-A/-R through `imagenet_indices` (source: all 1000 ImageNet classes), else by
    class name when every target name occurs exactly once among the source's."""
    if target.imagenet_indices is not None:
        full = source.name == "imagenet" and source.subsample == "all"
        return list(target.imagenet_indices) if full else None
    names = list(source.classnames)
    if all(names.count(c) == 1 for c in target.classnames):
        return [names.index(c) for c in target.classnames]
    return None


def _subset_index(cfg: Config, per_class: Sequence[str], source: DatasetSplits,
                  split: DatasetSplits) -> List[int]:
    """`class_index`, or the RunError saying why per-class tensors cannot serve `split`."""
    index = class_index(source, split)
    if index is None:
        raise RunError(
            f"method {cfg.method.name!r} learns per-class tensors ({', '.join(per_class)}) for "
            f"the {source.num_classes} training classes of {source.name}; they do not exist for "
            f"the classes of {split.name} ({split.subsample}): evaluate it only on its training "
            "classes or their subsets (e.g. use CoOp without class_specific for this protocol)")
    return index


def model_for(split: DatasetSplits, trained, source: DatasetSplits, cfg: Config, clip,
              ctx: Context, per_class: Sequence[str]):
    """The trained model if it fits `split` (classes, template, `eval.speedups`); else the
    method built for `split` with the trained tensors (`per_class` ones sliced to a subset)."""
    if (split.classnames, split.template, cfg.eval.speedups) == (
            source.classnames, trained.template, trained.speedups):
        return trained
    state = trained.trainable_state_dict()
    model = build(cfg, clip, split.classnames, split.template, speedups=cfg.eval.speedups)
    if per_class and split.classnames != source.classnames:
        index = _subset_index(cfg, per_class, source, split)
        state = {k: v[torch.as_tensor(index, device=v.device)] if k in per_class else v
                 for k, v in state.items()}
        log.info("%s: per-class tensors %s sliced to its %d classes", split.name,
                 ", ".join(per_class), len(index))
    try:
        model.load_trainable_state_dict(state)
    except ValueError as e:
        raise RunError(f"cannot evaluate on {split.name}: {e}") from None
    return model.to(ctx.device)


# --------------------------------------------------------------------------- the setting
@dataclass
class Setting:
    """What every run of one setting (all but shots and seed) shares, loaded and checked once."""
    runs: List[Config]
    ctx: Context
    clip: object
    source: DatasetSplits                                 # the training dataset
    train: DatasetSplits                                  # its classes the protocol trains on
    tests: List[Tuple[str, DatasetSplits]]                # (results key, split) to evaluate
    size: int                                             # input resolution
    trainable: bool
    per_class: List[str]                                  # per-class trained tensors

    def draw(self, cfg: Config, record: Optional[Path] = None) -> DatasetSplits:
        """The few-shot training set of run `cfg` (drawn on all classes, then subsampled)."""
        mode = cfg.data.fewshot_draw
        mode = self.source.fewshot_draw if mode == "auto" else mode
        return fewshot(self.source, cfg.data.shots, cfg.seed, record=record, mode=mode,
                       subsample=protocol(cfg.protocol).train_subsample(cfg))


def prepare(cfg: Config, opts: RunOptions, shots: Sequence[int], seeds: Sequence[int],
            ctx: Context, clip=None, datasets: Optional[Datasets] = None) -> Setting:
    """Resolve the setting and check everything that can fail before any folder is made: the
    data (every image header), the method against this CLIP, the trained tensors against the
    test sets' classes."""
    if opts.model_dir and opts.load_released:
        raise ConfigError("give either --model-dir or --load-released, not both")
    if opts.model_dir and len(seeds) * len(shots) > 1:
        raise ConfigError("--model-dir names one trained run: give a single --seed and --shots")
    resolve_dataset(cfg)
    runs = [resolve(cfg, k, s) for k in shots for s in seeds]
    first, datasets = runs[0], datasets or Datasets()
    source = datasets.get(cfg.data.dataset, cfg.data.root, cfg.data.split_file)
    clip = clip if clip is not None else load_frozen_clip(cfg, ctx)
    train = subsample_classes(source, protocol(cfg.protocol).train_subsample(first))
    probe = build(first, clip, train.classnames, train.template)
    if opts.load_released:     # read and fit it now: a bad file fails before any folder
        probe.load_released(opts.load_released)
    trainable = bool(probe.trainable_parameters())
    del probe
    root = data_root(cfg.data.dataset, cfg.data.root) if first.eval.datasets else ""
    tests = protocol(cfg.protocol).eval_sets(dataset_label(first), source, train,
                                             first.eval.datasets, lambda n: datasets.get(n, root))
    for _, split in tests:
        _check_classnames(split)
        check_images(split.test, first.data.on_bad_image, f"{split.name} test images")
    others = [s for _, s in tests if s.classnames != train.classnames]
    per_class = per_class_keys(first, clip, train.template) if trainable and others else []
    for split in others if per_class else []:
        _subset_index(first, per_class, train, split)
    size = cfg.data.image_size or clip.visual.input_resolution
    return Setting(runs, ctx, clip, source, train, tests, size, trainable, per_class)


# --------------------------------------------------------------------------- one run
def origin(cfg: Config, opts: RunOptions) -> str:
    """Where the run's trained tensors come from when not from its own training, as
    `<kind>:sha256:<hex>` (kind: released, init_released, eval; `rundir.run_tag`), else ""."""
    if opts.load_released:
        kind = "released" if opts.eval_only else "init_released"
        return f"{kind}:sha256:{sha256_file(find_checkpoint(opts.load_released, cfg.method.name))}"
    if not (opts.eval_only and opts.model_dir):
        return ""
    weights = Path(opts.model_dir).expanduser()
    weights = weights / RunFolder.FINAL if weights.is_dir() else weights
    if not weights.is_file() or weights.parent.resolve() == run_folder(cfg).resolve():
        return ""                   # in place (or missing: `_decide` says so)
    return f"eval:sha256:{sha256_file(weights)}"


def _decide(folder: RunFolder, opts: RunOptions, trainable: bool) -> Tuple[Optional[str], Optional[Path]]:
    """(status, or None to skip the run; the weights to evaluate with --eval-only), decided
    from the folder before anything is written."""
    status = folder.status()
    if not opts.eval_only:
        if status == "finished" and not opts.force:
            log.info("%s holds a finished run (metrics.json): nothing to do. Evaluate it again "
                     "with --eval-only, or train it again with --force", folder.path)
            return None, None
        if status in ("trained", "interrupted") and not (opts.resume or opts.force):
            found = folder.LAST if status == "interrupted" else folder.FINAL
            raise RunError(f"{folder.path} holds an unfinished run ({found} without a complete "
                           "metrics.json): continue it with --resume, or start over with --force")
        return ("new" if opts.force else status), None
    if not trainable or opts.load_released:
        return status, None
    weights = Path(opts.model_dir).expanduser() if opts.model_dir else folder.final
    weights = weights / folder.FINAL if weights.is_dir() else weights
    if not weights.is_file() and (weights.parent / folder.LAST).is_file():
        raise RunError(f"{weights.parent} holds an unfinished run ({folder.LAST}, no "
                       f"{folder.FINAL}): finish it with --resume first")
    if not weights.is_file():
        raise CheckpointError(f"run checkpoint not found: {weights} (expected a run folder "
                              f"holding {folder.FINAL}, or that file: train the run first, or "
                              "point --model-dir at a trained run folder)")
    return status, weights


def _train(setting: Setting, model, cfg: Config, opts: RunOptions, folder: RunFolder,
           status: str) -> Tuple[List[dict], Optional[dict]]:
    """Train (or resume, or pick up a finished training); returns (history, few-shot info)."""
    if status == "trained":
        log.info("training already finished (%s): evaluating", folder.final)
        return (load_weights(model, folder.final, cfg.method.name)["history"],
                recorded_info(folder.fewshot))
    # rank 0 records the draw first; the others repeat it
    draw = setting.ctx.main_first(lambda: setting.draw(cfg, record=folder.fewshot))
    train = check_images(draw.train, cfg.data.on_bad_image, f"{draw.name} training images")
    log.info("training on %d images of %d classes for %d epochs (%s; batch %d, lr %g)",
             len(train), draw.num_classes, cfg.optim.epochs_for(cfg.data.shots),
             cfg.optim.epochs_reason(cfg.data.shots), cfg.optim.batch_size, cfg.optim.lr)
    history = fit(model, train, cfg, folder, setting.ctx, setting.size, resume=opts.resume,
                  stop_after=opts.stop_after)
    return history, draw.fewshot_info


def _evaluate(setting: Setting, model, cfg: Config) -> Dict[str, dict]:
    """Metrics per evaluated set (rank 0; {} elsewhere)."""
    results: Dict[str, dict] = {}
    for key, split in setting.tests:
        m = model_for(split, model, setting.train, cfg, setting.clip, setting.ctx, setting.per_class)
        preds = predict(m, split.test, cfg, setting.ctx, setting.size, desc=f"test {key}")
        if not setting.ctx.main:
            continue
        res = classification_metrics(preds.tolist(), [d.label for d in split.test],
                                     split.num_classes)
        log.info("%s: accuracy %.2f%%, macro-F1 %.2f%% (%d test images, %d classes)", key,
                 res["accuracy"], res["macro_f1"], res["num_images"], split.num_classes)
        results[key] = {"dataset": split.name, "subsample": split.subsample,
                        "num_classes": split.num_classes, **res,
                        "classnames": list(split.classnames), "split": split.split_info}
    return results


def run_one(setting: Setting, cfg: Config, opts: RunOptions) -> Optional[dict]:
    """Train (unless evaluating only) and evaluate one run in its folder; returns its metrics
    document (None when the folder already held a finished run, or on ranks > 0)."""
    ctx, train, source = setting.ctx, setting.train, origin(cfg, opts)
    folder = RunFolder(run_folder(cfg, source), writer=ctx.main)
    folder.check_free()                 # a live run is "in use", not "unfinished"
    seen = folder.status()
    status, weights = _decide(folder, opts, setting.trainable)
    if status is None:
        return None
    with folder.claim(), folder.logging():
        if ctx.main and folder.status() != seen:
            raise RunError(f"{folder.path} changed while this run started (another run finished "
                           "or wrote in it): run the command again")
        if opts.force and not opts.eval_only:
            folder.clean()
        log.info("run %s: %s on %s, %s, %d shots, seed %d%s", folder.path, run_tag(cfg, source),
                 dataset_label(cfg), cfg.protocol, cfg.data.shots, cfg.seed,
                 " (evaluation only)" if opts.eval_only else "")
        if ctx.main and not opts.eval_only:
            folder.write_config(cfg)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        model = build(cfg, setting.clip, train.classnames, train.template).to(ctx.device)
        log.info("%s: %d trainable parameters; input %dpx", method_tag(cfg),
                 model.num_trainable(), setting.size)
        if opts.load_released:
            model.load_released(opts.load_released)
            log.info("loaded the released-code checkpoint %s", opts.load_released)
        history, fewshot_info = [], None
        if weights is not None:          # and the draw they were trained on, if recorded
            history = load_weights(model, weights, cfg.method.name)["history"]
            fewshot_info = recorded_info(weights.parent / RunFolder.FEWSHOT)
            log.info("evaluating the trained tensors of %s", weights)
        elif setting.trainable and not opts.eval_only:
            history, fewshot_info = _train(setting, model, cfg, opts, folder, status)
            weights = folder.final
        results = _evaluate(setting, model, cfg)
        if not ctx.main:
            return None
        doc = _metrics_doc(setting, cfg, opts, source, results, weights, {
            "trainable_parameters": model.num_trainable(), "history": history,
            "fewshot": fewshot_info})
        folder.write_metrics(doc)
        log.info("summary: %s; wrote %s", _fmt(doc["summary"]), folder.metrics)
        return doc


def _metrics_doc(setting: Setting, cfg: Config, opts: RunOptions, source: str,
                 results: Dict[str, dict], weights: Optional[Path], train: dict) -> dict:
    s = {"protocol": cfg.protocol, "dataset": dataset_label(cfg), "dataset_name": cfg.data.dataset,
         "method": cfg.method.name, "variant": getattr(cfg.method, "variant", None),
         "fusion": cfg.method.fusion_name() if hasattr(cfg.method, "fusion_name") else None,
         "tag": run_tag(cfg, source), "setting_hash": setting_hash(cfg, source),
         "origin": source or None, "shots": cfg.data.shots,
         "seed": cfg.seed, "clip": cfg.clip, "image_size": setting.size,
         "epochs": cfg.optim.epochs_for(cfg.data.shots) if setting.trainable else 0,
         "subsample": setting.train.subsample, "eval_datasets": list(cfg.eval.datasets)}
    return {"setting": s, "summary": protocol(cfg.protocol).summary(dataset_label(cfg), results),
            "results": results, "train": train, "eval_only": opts.eval_only,
            "weights": str(weights) if weights else None,
            "released_checkpoint": opts.load_released or None}


def _fmt(v) -> str:
    """A summary for the log: numbers to 2 decimals, dicts as `key value, ...`."""
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


# --------------------------------------------------------------------------- entry points
def describe(setting: Setting, opts: RunOptions) -> str:
    """What `--dry-run` prints: the resolved config, the data, the model and the schedule."""
    src, info = setting.source, setting.source.split_info
    state = {True: "matches the published file", False: "differs from the published file",
             None: info.get("note") or "no published checksum"}[info.get("matches_published")]
    split = (f"{info['file']} (sha256 {str(info.get('sha256'))[:12]}): {state}"
             if info.get("file") else f"none ({state})")
    lines = ["# resolved config (first run)", config_text(setting.runs[0]).rstrip(), "",
             f"dataset {src.name}: {src.num_classes} classes, {len(src.train)} train / "
             f"{len(src.val)} val / {len(src.test)} test images in {src.dataset_dir}",
             f"split file: {split}"]
    tests = [f"  test {k}: {len(s.test)} images, {s.num_classes} classes" for k, s in setting.tests]
    for run in setting.runs:
        model = build(run, setting.clip, setting.train.classnames, setting.train.template)
        source = origin(run, opts)
        folder = RunFolder(run_folder(run, source))
        has_fusion = getattr(model, "fusion", None) is not None
        fusion = f" (fusion {run.method.fusion_name()})" if has_fusion else ""
        line = (f"run {folder.path} [{folder.status()}]: {run_tag(run, source)}{fusion}, input "
                f"{setting.size}px, {model.num_trainable()} trainable parameters")
        if setting.trainable:
            draw, epochs = setting.draw(run), run.optim.epochs_for(run.data.shots)
            steps = steps_per_epoch(len(draw.train), run.optim.batch_size)
            mode = f" ({draw.fewshot_info['mode']} few-shot draw)" if draw.fewshot_info else ""
            line += (f"; {len(draw.train)} training images{mode}, {epochs} epochs "
                     f"({run.optim.epochs_reason(run.data.shots)}) x {steps} steps = "
                     f"{epochs * steps} steps")
        lines += [line] + tests
    return "\n".join(lines)


@contextlib.contextmanager
def _context(cfg: Config) -> Iterator[Context]:
    ctx = setup_context(cfg.precision)
    logging.getLogger("dcp").setLevel(logging.INFO if ctx.main else logging.WARNING)
    try:
        yield ctx
    finally:
        teardown_context(ctx)


def run_all(cfg: Config, opts: RunOptions, seeds: Sequence[int], shots: Sequence[int],
            clip=None, datasets: Optional[Datasets] = None) -> List[Optional[dict]]:
    """Run the setting of `cfg` for every shots x seed (skipping finished runs); returns each
    run's metrics document (None where nothing was done). `clip`/`datasets`: already loaded."""
    with _context(cfg) as ctx:
        setting = prepare(cfg, opts, shots, seeds, ctx, clip, datasets)
        return [run_one(setting, run, opts) for run in setting.runs]


def dry_run(cfg: Config, opts: RunOptions, seeds: Sequence[int], shots: Sequence[int]) -> str:
    """Every check of `run_all`, nothing written: the description `describe` gives."""
    with _context(cfg) as ctx:
        return describe(prepare(cfg, opts, shots, seeds, ctx), opts)
