"""The run folder: the one owner of its name, its state and every file written into it
(docs/design.md, "The run folder").

    <output>/<protocol>/<dataset>/<tag>-<setting hash>/shots<K>/seed<S>/

Files are written atomically (a crash leaves the old file or none); checkpoints carry a
SHA-256 of their content, checked with the zip CRCs whenever read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from .clip import CheckpointError
from .config import Config, config_text, cut, short, to_dict
from .registry import FUSIONS
from .utils import atomic_torch_save, atomic_write_text, load_torch_file, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dcp-run-checkpoint-1"
METRICS_FORMAT = "dcp-metrics-1"
USER_DATASETS = ("folder", "csv")


class RunError(RuntimeError):
    """A run that cannot proceed as asked (unfinished folder, another setting, busy, ...)."""

    def __init__(self, message: object = ""):
        super().__init__(cut(str(message)))         # one line, also for a huge --output path


# --------------------------------------------------------------------------- names
def method_tag(cfg: Config) -> str:
    """`dcp`, `dcp_released`, `ivlp+gated_coupling`: method, variant, fusion if not its own."""
    m = cfg.method
    tag = m.name + ("" if getattr(m, "variant", "paper") == "paper" else f"_{m.variant}")
    if hasattr(m, "fusion_name"):
        own = dataclasses.replace(m, fusion=type(m)().fusion).fusion_name()
        tag += "" if m.fusion_name() == own else f"+{m.fusion_name()}"
    return tag


def dataset_label(cfg: Config) -> str:
    """The dataset's registered name; for users' data (`folder`, `csv`) its folder / file name."""
    if cfg.data.dataset in USER_DATASETS:
        return Path(cfg.data.root).expanduser().stem or cfg.data.dataset
    return cfg.data.dataset


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return "sha256:" + sha256_file(path)


def setting_identity(cfg: Config, origin: str = "") -> Dict[str, Any]:
    """The config minus what cannot change results: seed and shots (in the path), output and
    data root (where things lie), loader workers, evaluation speed-ups (exact) and the test
    batch size (unless the method's evaluation depends on its batch). A CLIP checkpoint file
    counts by its SHA-256, wherever it lies; so do trained tensors from elsewhere (`origin`)."""
    d = to_dict(cfg)
    if origin:
        d["origin"] = origin
    for key in ("seed", "output"):
        d.pop(key)
    for key in ("shots", "num_workers") + (() if cfg.data.dataset in USER_DATASETS else ("root",)):
        d["data"].pop(key)
    d["eval"].pop("speedups")
    fusion = FUSIONS.get(cfg.method.fusion_name()) if hasattr(cfg.method, "fusion_name") else None
    if not getattr(fusion, "batch_dependent", False):
        d["eval"].pop("batch_size")
    clip = Path(cfg.clip).expanduser()
    if clip.is_file():
        d["clip"] = _file_digest(str(clip.resolve()), clip.stat().st_size, clip.stat().st_mtime_ns)
    return d


def setting_hash(cfg: Config, origin: str = "") -> str:
    text = json.dumps(setting_identity(cfg, origin), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_tag(cfg: Config, origin: str = "") -> str:
    """`method_tag`, marked when the trained tensors come from elsewhere (`origin`
    `<kind>:sha256:<hex>`): `+released` (a released checkpoint evaluated), `+init_released`
    (trained from one), `+eval` (another run's final.pt evaluated)."""
    return method_tag(cfg) + (f"+{origin.split(':')[0]}" if origin else "")


def run_folder(cfg: Config, origin: str = "") -> Path:
    """<output>/<protocol>/<dataset>/<tag>-<setting hash>/shots<K>/seed<S>: a run whose trained
    tensors come from elsewhere (`origin`) has its own folder, never a trained run's."""
    return (Path(cfg.output or "output") / cfg.protocol / dataset_label(cfg)
            / f"{run_tag(cfg, origin)}-{setting_hash(cfg, origin)}" / f"shots{cfg.data.shots}"
            / f"seed{cfg.seed}")


# --------------------------------------------------------------------------- files
@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """OSError (disk full, read-only, not a folder) -> one RunError naming `path`."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        hint = "; free some space" if e.errno == errno.ENOSPC else ""
        raise RunError(f"cannot write {path}: {reason}{hint}") from None


def read_metrics(path: Path) -> Optional[dict]:
    """A metrics.json written by this project, or None (missing, truncated, foreign)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == METRICS_FORMAT else None


class RunFolder:
    """One run's folder. Only the main process (`writer`) writes into it."""
    CONFIG, LOG, FEWSHOT = "config.yaml", "log.txt", "fewshot.json"
    LAST, FINAL, METRICS, LOCK = "last.pt", "final.pt", "metrics.json", ".lock"

    def __init__(self, path: Path, writer: bool = True):
        self.path, self.writer = Path(path), writer
        p = self.path
        self.config, self.log, self.fewshot = p / self.CONFIG, p / self.LOG, p / self.FEWSHOT
        self.last, self.final, self.metrics = p / self.LAST, p / self.FINAL, p / self.METRICS

    def status(self) -> str:
        """finished (a readable metrics.json) | trained (final.pt) | interrupted (last.pt) | new."""
        try:
            if read_metrics(self.metrics) is not None:
                return "finished"
            if self.metrics.exists():
                log.warning("%s is damaged (not a complete metrics file): the run is not finished",
                            self.metrics)
            return "trained" if self.final.is_file() else "interrupted" if self.last.is_file() else "new"
        except OSError as e:        # a name too long, a parent folder that cannot be read
            raise RunError(f"cannot use {self.path}: {e.strerror or e}") from None

    @contextlib.contextmanager
    def claim(self) -> Iterator["RunFolder"]:
        """Create the folder, hold its lock while the run works in it, tidy what a crash left:
        temporary files of atomic writes, last.pt beside a final.pt."""
        if not self.writer:
            yield self
            return
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, self.path)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            for tmp in self.path.glob(".*.tmp"):
                tmp.unlink()
            if self.final.is_file():
                self.last.unlink(missing_ok=True)
            yield self
        finally:
            os.close(fd)

    def check_free(self) -> None:
        """RunError if another process holds this folder's lock (a run is working in it)."""
        lock = self.path / self.LOCK
        if self.writer and lock.is_file():
            fd = os.open(lock, os.O_RDWR)
            try:
                _lock(fd, self.path)            # and released with the descriptor
            finally:
                os.close(fd)

    def clean(self) -> None:
        """Remove the results of an earlier run (`--force`); the writer only."""
        if self.writer:
            for p in (self.metrics, self.final, self.last, self.fewshot):
                p.unlink(missing_ok=True)

    def write_config(self, cfg: Config) -> None:
        with writing(self.config):
            atomic_write_text(self.config, config_text(cfg))

    def write_metrics(self, doc: Dict[str, Any]) -> None:
        text = json.dumps({"format": METRICS_FORMAT, **doc}, indent=1) + "\n"
        with writing(self.metrics):
            atomic_write_text(self.metrics, text)

    @contextlib.contextmanager
    def logging(self) -> Iterator[None]:
        """Copy the `dcp` log into log.txt (appended) while the run lasts, its end reason too."""
        if not self.writer:
            yield
            return
        with writing(self.log):
            handler = _QuietFileHandler(self.log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("dcp")
        logger.addHandler(handler)
        try:
            yield
        except BaseException as e:
            handler.handle(logging.LogRecord("dcp", logging.ERROR, __file__, 0, "run ended: %s: %s",
                                             (type(e).__name__, short(str(e), 500)), None))
            raise
        finally:
            logger.removeHandler(handler)
            handler.close()

    def save_checkpoint(self, path: Path, model, cfg: Config, epoch: int, history: list,
                        **training: Any) -> None:
        """Trained tensors, config, epoch and history (+ optimiser/RNG state for last.pt)."""
        obj = {"format": CHECKPOINT_FORMAT, "method": cfg.method.name, "epoch": epoch,
               "config": to_dict(cfg), "history": history,
               "state_dict": {k: v.detach().to("cpu", copy=True)
                              for k, v in model.trainable_state_dict().items()}, **training}
        with writing(path):
            atomic_torch_save(obj, path)

    def finish_training(self, model, cfg: Config, epochs: int, history: list) -> None:
        self.save_checkpoint(self.final, model, cfg, epochs, history)
        self.last.unlink(missing_ok=True)


def _lock(fd: int, folder: Path) -> None:
    try:
        import fcntl
    except ImportError:                                # Windows: no advisory lock, say so once
        log.warning("no file locking on this platform: do not start two runs on %s", folder)
        return
    try:   # a POSIX record lock: held by this process only, not by forked loader workers
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise RunError(f"{folder} is in use by another run (process {other}): wait until it "
                       "ends, or give another --output") from None


class _QuietFileHandler(logging.FileHandler):
    """A log file that stops (saying so once) instead of printing tracebacks when the disk fails."""

    def handleError(self, record) -> None:
        logging.getLogger("dcp").removeHandler(self)
        log.warning("cannot write the run log %s any more; the console log goes on", self.baseFilename)


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A run checkpoint (tensors and plain containers only; CRCs and SHA-256 verified)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"run checkpoint not found: {path}")
    try:
        obj = load_torch_file(path, require_digest=True)
    except Exception as e:      # damaged, unreadable or refused (non-tensor globals)
        first = (str(e).strip().splitlines() or [""])[0]
        first = first[len(f"{path}: "):] if first.startswith(f"{path}: ") else first   # named once
        raise CheckpointError(f"{path}: cannot read this run checkpoint ({type(e).__name__}: "
                              f"{short(first, 300)})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a dcp run checkpoint (expected format "
                              f"{CHECKPOINT_FORMAT!r}); for checkpoints of the authors' released "
                              "code use --load-released")
    return obj


def load_weights(model, path: Path, method: str) -> Dict[str, Any]:
    """Load a run checkpoint's trained tensors into `model`; returns the checkpoint."""
    obj = load_checkpoint(path)
    if obj["method"] != method:
        raise CheckpointError(f"{path} holds method {obj['method']!r}, the config asks for "
                              f"{method!r}")
    try:
        model.load_trainable_state_dict(obj["state_dict"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return obj


# Keys whose change makes a resumed run a different experiment.
RESUME_KEYS = ("clip", "method", "optim", "seed", "precision", "protocol", "data.dataset",
               "data.shots", "data.subsample", "data.split_file", "data.image_size",
               "data.fewshot_draw", "data.crop_scale", "data.exif_transpose")


def check_resumable(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    """Raise RunError naming the keys where the checkpoint's config differs from this run's."""
    def get(d, key):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d
    diff = [k for k in RESUME_KEYS if get(saved, k) != get(current, k)]
    if diff:
        raise RunError(f"{path} was written with another setting ({', '.join(diff)} differ): "
                       "resume with the same config, or start over with --force")
