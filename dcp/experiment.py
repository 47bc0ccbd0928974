"""One experiment = one setting (protocol, dataset, method, shots) x seeds, each in its own run
folder `<output>/<protocol>/<dataset>/<method>[_<variant>]/shots<K>/seed<S>`:

    config.yaml   the resolved config          fewshot.json  the few-shot draw
    log.txt       the run's log                last.pt       after every epoch (removed at the end)
    final.pt      the trained tensors          metrics.json  written last: the run is finished

Protocols (spec section 5): `fewshot` trains and tests on one dataset (optionally a class
subset, `data.subsample`); `base2novel` trains on the base half and tests on base and novel;
`cross_dataset` and `domain_generalization` train on the source dataset (ImageNet) and also
test on `eval.datasets` (default: the ten other datasets / ImageNet-V2, -Sketch, -A, -R).
A test set with other classes gets a model built for its class names, loaded with the trained
tensors: exact for every method whose learned tensors do not depend on the class. Per-class
tensors (CoOp `class_specific`) are sliced to the subset's classes when the test classes are a
subset of the training classes (ImageNet-A/-R via `imagenet_indices`), otherwise refused.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .clip import CheckpointError, load as load_clip
from .clip.model import convert_weights
from .config import Config, ConfigError, save_config
from .data import DatasetSplits, build_dataset, detect_dataset, fewshot, subsample_classes
from .data.fewshot import RECORD_NAME
from .engine import (FINAL, LAST, Context, RunError, fit, load_weights, predict,
                     seed_everything, setup_context, teardown_context)
from .methods import build_method
from .registry import DATASETS
from .results import classification_metrics, harmonic_mean, write_metrics

log = logging.getLogger(__name__)

PROTOCOL_TARGETS = {
    "cross_dataset": ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                      "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"],
    "domain_generalization": ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
}
USER_DATASETS = ("folder", "csv")


@dataclass
class RunOptions:
    """What to do with the run folders (command-line options, not part of the config)."""
    eval_only: bool = False
    model_dir: str = ""           # a trained run folder (or its final.pt) to evaluate
    load_released: str = ""       # a checkpoint of the authors' released code
    resume: bool = False
    force: bool = False
    stop_after: int = 0           # stop after this many epochs, as if killed (tests --resume)


# --------------------------------------------------------------------------- names and folders
def method_tag(cfg: Config) -> str:
    """`dcp`, `dcp_released`, ...: the method name, plus the variant when it is not `paper`."""
    variant = getattr(cfg.method, "variant", "paper")
    return cfg.method.name + ("" if variant == "paper" else f"_{variant}")


def dataset_label(cfg: Config) -> str:
    """The dataset's registered name; for users' data (`folder`, `csv`) its folder / file name."""
    if cfg.data.dataset in USER_DATASETS:
        return Path(cfg.data.root).expanduser().stem or cfg.data.dataset
    return cfg.data.dataset


def run_folder(cfg: Config) -> Path:
    return (Path(cfg.output or "output") / cfg.protocol / dataset_label(cfg) / method_tag(cfg)
            / f"shots{cfg.data.shots}" / f"seed{cfg.seed}")


def run_status(run_dir: Path) -> str:
    """finished (metrics.json) | trained (final.pt) | interrupted (last.pt) | new."""
    if (run_dir / "metrics.json").is_file():
        return "finished"
    if (run_dir / FINAL).is_file():
        return "trained"
    if (run_dir / LAST).is_file():
        return "interrupted"
    return "new"


def data_root(name: str, root: str) -> str:
    """The folder holding the dataset folders, also when `root` is dataset `name`'s own folder."""
    reader = DATASETS.get(name)(name)
    p = Path(root).expanduser()
    if reader.folder and not (p / reader.folder).is_dir() and (p.name == reader.folder
                                                                 or reader.detect(p)):
        return str(p.parent)
    return str(p)


def resolve(cfg: Config, shots: int, seed: int) -> Config:
    """The config of one run: shots, seed, epochs for these shots, default protocol targets."""
    cfg = copy.deepcopy(cfg)
    cfg.seed, cfg.data.shots = seed, shots
    cfg.optim.epochs = cfg.optim.epochs_for(shots)
    if cfg.protocol in PROTOCOL_TARGETS:
        cfg.eval.datasets = list(cfg.eval.datasets) or list(PROTOCOL_TARGETS[cfg.protocol])
    elif cfg.eval.datasets:
        raise ConfigError(f"eval.datasets: only the cross_dataset and domain_generalization "
                          f"protocols evaluate on other datasets (protocol is {cfg.protocol!r})")
    if cfg.protocol == "base2novel" and cfg.data.subsample != "all":
        raise ConfigError("data.subsample: the base2novel protocol trains on the base classes and "
                          "tests on base and novel itself; leave data.subsample at 'all'")
    return cfg


def resolve_dataset(cfg: Config) -> None:
    """Fill `data.dataset` by recognising `data.root` when it is not named; make the data root
    and a CLIP checkpoint path absolute."""
    if not cfg.data.root:
        raise ConfigError("data.root: no data given; pass --data PATH (a data root or one "
                          "dataset's folder)")
    cfg.data.root = str(Path(cfg.data.root).expanduser().absolute())
    if Path(cfg.clip).expanduser().is_file():     # saved configs work from any folder
        cfg.clip = str(Path(cfg.clip).expanduser().absolute())
    if not cfg.data.dataset:
        cfg.data.dataset, cfg.data.root = detect_dataset(cfg.data.root)
        log.info("recognised dataset %s in %s", cfg.data.dataset, cfg.data.root)
    elif cfg.data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.data.dataset!r}; registered: "
                          f"{', '.join(DATASETS.names())}")
    for name in cfg.eval.datasets:
        if name not in DATASETS:
            raise ConfigError(f"eval.datasets: unknown dataset {name!r}; registered: "
                              f"{', '.join(DATASETS.names())}")


# --------------------------------------------------------------------------- logging
@contextmanager
def run_log(run_dir: Path, ctx: Context) -> Iterator[None]:
    """Copy the `dcp` log into `run_dir/log.txt` (appended; rank 0 only) while a run lasts."""
    if not ctx.main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("dcp")
    logger.addHandler(handler)
    try:
        yield
    except BaseException as e:     # the reason a run ended early goes into its log too
        handler.handle(logging.LogRecord("dcp", logging.ERROR, __file__, 0, "run ended: %s: %s",
                                         (type(e).__name__, e), None))
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


# --------------------------------------------------------------------------- models per class list
class Datasets:
    """Datasets read once per invocation (listing ImageNet takes a while)."""

    def __init__(self):
        self._cache: Dict[Tuple[str, str, str], DatasetSplits] = {}

    def get(self, name: str, root: str, split_file: str = "") -> DatasetSplits:
        key = (name, root, split_file)
        if key not in self._cache:
            self._cache[key] = build_dataset(name, root, split_file=split_file)
        return self._cache[key]


def build(cfg: Config, clip, classnames: Sequence[str], template: str):
    """`build_method`, with a method that does not fit the CLIP reported as a config error."""
    try:
        model = build_method(cfg.method, clip, classnames, template=template)
        model.grad_checkpoint = cfg.optim.activation_checkpointing
        return model
    except ValueError as e:
        raise ConfigError(f"method ({cfg.method.name}): {e}") from None


def per_class_keys(cfg: Config, clip, template: str) -> List[str]:
    """Trained tensors whose shape depends on the number of classes (e.g. CoOp class_specific
    ctx (C, n, D)), found by building the method for two and for three classes."""
    state = torch.get_rng_state()
    try:
        two = build(cfg, clip, ["a", "b"], template).trainable_state_dict()
        three = build(cfg, clip, ["a", "b", "c"], template).trainable_state_dict()
    finally:
        torch.set_rng_state(state)
    return [k for k in two if k in three and two[k].shape != three[k].shape]


def class_index(source: DatasetSplits, target: DatasetSplits) -> Optional[List[int]]:
    """For each target class its label among the source classes, or None if not a subset:
    ImageNet-A/-R through `imagenet_indices` (source: all 1000 ImageNet classes), else by
    class name when every target name occurs exactly once among the source's."""
    if target.imagenet_indices is not None:
        full = source.name == "imagenet" and source.subsample == "all"
        return list(target.imagenet_indices) if full else None
    where = {}
    for i, c in enumerate(source.classnames):
        where.setdefault(c, []).append(i)
    if all(len(where.get(c, ())) == 1 for c in target.classnames):
        return [where[c][0] for c in target.classnames]
    return None


def _no_class_subset(cfg: Config, per_class: Sequence[str], source: DatasetSplits,
                     split: DatasetSplits) -> RunError:
    return RunError(
        f"method {cfg.method.name!r} learns per-class tensors ({', '.join(per_class)}) for the "
        f"{source.num_classes} training classes of {source.name}; they do not exist for the "
        f"classes of {split.name} ({split.subsample}): evaluate it only on its training classes "
        "or their subsets (e.g. use CoOp without class_specific for this protocol)")


def model_for(split: DatasetSplits, trained, source: DatasetSplits, cfg: Config, clip,
              ctx: Context, per_class: Sequence[str]):
    """The trained model if `split` has its classes and template; else the method built for
    `split`'s classes with the trained tensors (`per_class` ones sliced to a class subset)."""
    if split.classnames == source.classnames and split.template == trained.template:
        return trained
    state = trained.trainable_state_dict()
    model = build(cfg, clip, split.classnames, split.template)
    if per_class:
        index = class_index(source, split)
        if index is None:
            raise _no_class_subset(cfg, per_class, source, split)
        state = dict(state)
        for k in per_class:
            state[k] = state[k][torch.as_tensor(index, device=state[k].device)]
        log.info("%s: per-class tensors %s sliced to its %d classes", split.name,
                 ", ".join(per_class), len(index))
    try:
        model.load_trainable_state_dict(state)
    except ValueError as e:
        raise RunError(f"cannot evaluate on {split.name}: {e}") from None
    return model.to(ctx.device)


# --------------------------------------------------------------------------- one run
def _clean(run_dir: Path, ctx: Context) -> None:
    if ctx.main:
        for name in ("metrics.json", FINAL, LAST, RECORD_NAME):
            if (run_dir / name).exists():
                (run_dir / name).unlink()
    ctx.barrier()


def _weights_file(opts: RunOptions, run_dir: Path) -> Path:
    if opts.model_dir:
        p = Path(opts.model_dir).expanduser()
        return p if p.is_file() else p / FINAL
    return run_dir / FINAL


def eval_sets(cfg: Config, source: DatasetSplits, train_split: DatasetSplits,
              datasets: Datasets) -> List[Tuple[str, DatasetSplits]]:
    if cfg.protocol == "base2novel":
        return [("base", train_split), ("novel", subsample_classes(source, "new"))]
    sets = [(dataset_label(cfg), train_split)]
    root = data_root(cfg.data.dataset, cfg.data.root) if cfg.eval.datasets else ""
    return sets + [(name, datasets.get(name, root)) for name in cfg.eval.datasets]


def summary_of(cfg: Config, results: Dict[str, dict]) -> Dict[str, object]:
    acc = {k: v["accuracy"] for k, v in results.items()}
    if cfg.protocol == "base2novel":
        return {"base": acc["base"], "novel": acc["novel"],
                "hm": harmonic_mean(acc["base"], acc["novel"])}
    label = dataset_label(cfg)
    if cfg.protocol == "fewshot":
        return {"accuracy": acc[label], "macro_f1": results[label]["macro_f1"]}
    targets = {k: v for k, v in acc.items() if k != label}
    return {"source": acc[label], "targets": targets,
            "average": sum(targets.values()) / len(targets) if targets else None}


def _preflight(cfg: Config, opts: RunOptions, run_dir: Path, ctx: Context,
               trainable: bool) -> Tuple[Optional[str], Optional[Path]]:
    """Decide from the run folder what to do: (status, or None to skip the run; the weights
    to evaluate with --eval-only). Nothing is written before these checks pass."""
    status = run_status(run_dir)
    if not opts.eval_only:
        if status == "finished" and not opts.force:
            log.info("%s holds a finished run (metrics.json): nothing to do. Evaluate it again "
                     "with --eval-only, or train it again with --force", run_dir)
            return None, None
        if status in ("trained", "interrupted") and not (opts.resume or opts.force):
            found = LAST if status == "interrupted" else FINAL
            raise RunError(f"{run_dir} holds an unfinished run ({found} without metrics.json): "
                           "continue it with --resume, or start over with --force")
        if opts.force and status != "new":
            log.info("--force: starting %s over", run_dir)
            _clean(run_dir, ctx)
            status = "new"
        return status, None
    if not trainable or opts.load_released:
        return status, None
    weights = _weights_file(opts, run_dir)
    if not weights.is_file() and (weights.parent / LAST).is_file():
        raise RunError(f"{weights.parent} holds an unfinished run ({LAST}, no {FINAL}): "
                       "finish it with --resume first")
    if not weights.is_file():
        raise CheckpointError(f"run checkpoint not found: {weights} (train the run first, or "
                              "point --model-dir at a trained run folder)")
    return status, weights


def _train(model, train_split: DatasetSplits, cfg: Config, opts: RunOptions, run_dir: Path,
           ctx: Context, size: int, status: str) -> Tuple[List[dict], Optional[dict]]:
    """Train (or resume, or pick up a finished training); returns (history, few-shot info)."""
    if status == "trained":
        log.info("training already finished (%s): evaluating", run_dir / FINAL)
        return load_weights(model, run_dir / FINAL, cfg.method.name)["history"], None
    train = None
    if ctx.main:           # rank 0 records the draw first; the others repeat it
        train = fewshot(train_split, cfg.data.shots, cfg.seed, run_dir=str(run_dir))
    ctx.barrier()
    if not ctx.main:
        train = fewshot(train_split, cfg.data.shots, cfg.seed, run_dir=str(run_dir))
    log.info("training on %d images of %d classes for %d epochs (batch %d, lr %g)",
             len(train.train), train.num_classes, cfg.optim.epochs, cfg.optim.batch_size,
             cfg.optim.lr)
    history = fit(model, train.train, cfg, run_dir, ctx, size, resume=opts.resume,
                  stop_after=opts.stop_after)
    return history, train.fewshot_info


def _evaluate(model, cfg: Config, ctx: Context, clip, source: DatasetSplits,
              train_split: DatasetSplits, datasets: Datasets, size: int,
              per_class: Sequence[str]) -> Dict[str, dict]:
    """Metrics per evaluated set (rank 0; {} elsewhere)."""
    results: Dict[str, dict] = {}
    for key, split in eval_sets(cfg, source, train_split, datasets):
        m = model_for(split, model, train_split, cfg, clip, ctx, per_class)
        preds = predict(m, split.test, cfg, ctx, size, desc=f"test {key}")
        if not ctx.main:
            continue
        res = classification_metrics(preds.tolist(), [d.label for d in split.test],
                                     split.num_classes)
        log.info("%s: accuracy %.2f%%, macro-F1 %.2f%% (%d test images, %d classes)", key,
                 res["accuracy"], res["macro_f1"], res["num_images"], split.num_classes)
        results[key] = {"dataset": split.name, "subsample": split.subsample,
                        "num_classes": split.num_classes, **res,
                        "classnames": list(split.classnames), "split": split.split_info}
    return results


def train_split_of(cfg: Config, source: DatasetSplits) -> DatasetSplits:
    """The classes trained on: the base half (base2novel) or `data.subsample`."""
    return subsample_classes(source, "base" if cfg.protocol == "base2novel" else cfg.data.subsample)


def run_one(cfg: Config, opts: RunOptions, ctx: Context, clip, datasets: Datasets,
            trainable: bool, per_class: Sequence[str]) -> None:
    """Train (unless evaluating only) and evaluate one run; write its folder. `per_class`:
    the method's trained tensors that are per class (checked against the test sets)."""
    run_dir = run_folder(cfg)
    status, weights = _preflight(cfg, opts, run_dir, ctx, trainable)
    if status is None:
        return
    with run_log(run_dir, ctx):
        log.info("run %s: %s on %s, %s, %d shots, seed %d%s", run_dir, method_tag(cfg),
                 dataset_label(cfg), cfg.protocol, cfg.data.shots, cfg.seed,
                 " (evaluation only)" if opts.eval_only else "")
        if cfg.demo:
            from .miniworld.demo import NOTE
            log.warning("%s", NOTE)
        if ctx.main and not opts.eval_only:
            save_config(cfg, run_dir / "config.yaml")
        seed_everything(cfg.seed)
        source = datasets.get(cfg.data.dataset, cfg.data.root, cfg.data.split_file)
        train_split = train_split_of(cfg, source)
        log.info("data: %s in %s, %d classes, %d train / %d test images; split %s", source.name,
                 source.dataset_dir, source.num_classes, len(source.train), len(source.test),
                 source.split_info.get("file") or source.split_info.get("note"))
        size = cfg.data.image_size or clip.visual.input_resolution
        model = build(cfg, clip, train_split.classnames, train_split.template).to(ctx.device)
        log.info("%s: %d trainable parameters; input %dpx", method_tag(cfg), model.num_trainable(),
                 size)
        if opts.load_released:
            model.load_released(opts.load_released)
            log.info("loaded the released-code checkpoint %s", opts.load_released)
        history, fewshot_info = [], None
        if weights is not None:
            history = load_weights(model, weights, cfg.method.name)["history"]
            log.info("evaluating the trained tensors of %s", weights)
        elif trainable and not opts.eval_only:
            history, fewshot_info = _train(model, train_split, cfg, opts, run_dir, ctx, size, status)
            weights = run_dir / FINAL
        results = _evaluate(model, cfg, ctx, clip, source, train_split, datasets, size, per_class)
        if not ctx.main:
            return
        summary = summary_of(cfg, results)
        setting = {"protocol": cfg.protocol, "dataset": dataset_label(cfg),
                   "dataset_name": cfg.data.dataset, "method": cfg.method.name,
                   "variant": getattr(cfg.method, "variant", None), "tag": method_tag(cfg),
                   "shots": cfg.data.shots, "seed": cfg.seed, "clip": cfg.clip,
                   "epochs": cfg.optim.epochs if trainable else 0, "image_size": size,
                   "subsample": train_split.subsample, "eval_datasets": list(cfg.eval.datasets)}
        doc = {"setting": setting, "summary": summary, "results": results,
               "train": {"trainable_parameters": model.num_trainable(), "history": history,
                         "fewshot": fewshot_info},
               "eval_only": opts.eval_only, "weights": str(weights) if weights else None,
               "released_checkpoint": opts.load_released or None}
        if cfg.demo:
            from .miniworld.demo import NOTE
            doc["demo"] = NOTE
        write_metrics(run_dir / "metrics.json", doc)
        log.info("summary: %s; wrote %s", ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items()),
                 run_dir / "metrics.json")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


# --------------------------------------------------------------------------- entry point
def clip_source(name: str) -> str:
    """`miniworld` is the shipped mini-world CLIP; other names and paths go to `dcp.clip.load`."""
    if name == "miniworld":
        from .miniworld import CHECKPOINT
        return str(CHECKPOINT)
    return name


def prepare_clip(cfg: Config, ctx: Context):
    """Load the frozen CLIP (rank 0 first, so a download happens once) in the context's dtype."""
    clip = None
    if ctx.main:
        clip, _ = load_clip(clip_source(cfg.clip), device=ctx.device)
    ctx.barrier()
    if not ctx.main:
        clip, _ = load_clip(clip_source(cfg.clip), device=ctx.device)
    if ctx.clip_dtype == torch.float16:
        convert_weights(clip)
    else:
        clip.float()
    return clip


def run_all(cfg: Config, opts: RunOptions, seeds: Sequence[int], shots: Sequence[int]) -> None:
    """Run the setting of `cfg` for every shots x seed (skipping finished runs)."""
    if opts.model_dir and opts.load_released:
        raise ConfigError("give either --model-dir or --load-released, not both")
    if opts.model_dir and len(seeds) * len(shots) > 1:
        raise ConfigError("--model-dir names one trained run: give a single --seed and --shots")
    ctx = setup_context(cfg.precision)
    logging.getLogger("dcp").setLevel(logging.INFO if ctx.main else logging.WARNING)
    try:
        if cfg.demo:
            from .miniworld.demo import prepare_demo
            if ctx.main:
                prepare_demo(cfg)
            ctx.barrier()
            if not ctx.main:
                prepare_demo(cfg)
        resolve_dataset(cfg)
        runs = [resolve(cfg, k, s) for k in shots for s in seeds]
        clip = prepare_clip(cfg, ctx)
        datasets = Datasets()      # read before any run folder is made: bad data fails first
        source = datasets.get(cfg.data.dataset, cfg.data.root, cfg.data.split_file)
        for name in runs[0].eval.datasets:
            datasets.get(name, data_root(cfg.data.dataset, cfg.data.root))
        # checks before any folder is made: the method fits this CLIP, and its trained
        # tensors exist for every test set's classes
        first = runs[0]
        probe = build(first, clip, source.classnames[:2], source.template)
        if opts.load_released and not hasattr(probe, "load_released"):
            raise ConfigError(f"--load-released: method {cfg.method.name!r} cannot read "
                              "checkpoints of the authors' released code")
        trainable = bool(probe.trainable_parameters())
        del probe
        train_split = train_split_of(first, source)
        others = [s for _, s in eval_sets(first, source, train_split, datasets)
                  if s.classnames != train_split.classnames]
        per_class = per_class_keys(first, clip, train_split.template) if trainable and others else []
        for split in others if per_class else []:
            if class_index(train_split, split) is None:
                raise _no_class_subset(first, per_class, train_split, split)
        for run_cfg in runs:
            run_one(run_cfg, opts, ctx, clip, datasets, trainable, per_class)
        if cfg.demo and ctx.main:
            from .miniworld.demo import report_demo
            report_demo(cfg, runs)
    finally:
        teardown_context(ctx)
