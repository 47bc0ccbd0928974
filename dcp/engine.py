"""Training, evaluation and run checkpoints (spec section 5: the Dassl conventions).

    ctx = setup_context(cfg.precision)         # device, precision, DDP rank / world size
    history = fit(model, train_data, cfg, run_dir, ctx, image_size, resume=True)
    preds = predict(model, test_data, cfg, ctx, image_size)   # (N,) on rank 0, None elsewhere

Reproducibility: all randomness of an epoch is a function of (seed, epoch). The shuffling
permutation comes from a generator seeded with `epoch_seed(seed, epoch)`, and each image's
augmentation from a generator seeded with `(epoch seed, image index)`, so a resumed epoch
replays exactly and the result does not depend on the number of loader workers or processes.
Under DDP the global batch `optim.batch_size` is split over the processes: every process
takes its slice of the same global batches a single process would see.

Checkpoints hold only what is trained (`model.trainable_state_dict()`, buffers included),
the config, the epoch, the optimiser and loss-scaler state, the learning rate, the training
history and the RNG states (as tensors), and are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .clip import CheckpointError
from .config import Config, to_dict
from .data import Datum, ImageDataset, build_transform
from .utils import Progress, atomic_torch_save

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dcp-run-checkpoint-1"
LAST, FINAL = "last.pt", "final.pt"


class RunError(RuntimeError):
    """A run that cannot proceed as asked (unfinished run folder, incompatible resume, ...)."""


class Stopped(Exception):
    """Training stopped on purpose after some epochs (`--stop-after`), as if killed."""


# --------------------------------------------------------------------------- learning rate
def lr_at_epoch(epoch: int, lr: float, epochs: int, warmup_epochs: int = 1,
                warmup_lr: float = 1e-5) -> float:
    """LR of 0-based `epoch`: constant `warmup_lr` for the warm-up epochs, then cosine
    `lr * 0.5 * (1 + cos(pi * (epoch - warmup_epochs) / epochs))` (Dassl's constant warm-up
    wrapping CosineAnnealingLR(T_max=epochs), stepped once per epoch)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


# --------------------------------------------------------------------------- context
@dataclass
class Context:
    """Where and how a process computes: device, autocast dtype, DDP rank / world size."""
    device: torch.device
    rank: int = 0
    world: int = 1
    clip_dtype: torch.dtype = torch.float32     # frozen CLIP weights
    amp_dtype: Optional[torch.dtype] = None     # autocast dtype (CUDA), None = fp32
    loss_scaling: bool = False                  # fp16 autocast needs a GradScaler

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_context(precision: str = "auto") -> Context:
    """Initialise DDP when launched by torchrun (WORLD_SIZE > 1) and resolve the precision.

    CPU: fp32 whatever is asked. CUDA: `fp32`; `amp`/`auto`: fp32 weights, bf16 autocast
    (fp16 with loss scaling where bf16 is unsupported); `fp16`: frozen CLIP cast to fp16,
    fp16 autocast with loss scaling. Trainable parameters always stay fp32.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    ctx = Context(device, rank, world)
    if not cuda:
        if precision in ("amp", "fp16"):
            log.warning("precision=%s needs CUDA; computing in fp32 on the CPU", precision)
        return ctx
    if precision == "fp16":
        ctx.clip_dtype, ctx.amp_dtype, ctx.loss_scaling = torch.float16, torch.float16, True
    elif precision in ("amp", "auto"):
        bf16 = torch.cuda.is_bf16_supported()
        ctx.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        ctx.loss_scaling = not bf16
    return ctx


def teardown_context(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- randomness
def _mix(*parts: object) -> int:
    """A 62-bit seed from its parts (stable across processes and Python versions)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 2


def epoch_seed(seed: int, epoch: int) -> int:
    return _mix("dcp-epoch", seed, epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """Python, torch and CUDA RNG states, as tensors and numbers (weights_only-loadable)."""
    version, state, gauss = random.getstate()
    return {"python_version": version, "python": torch.tensor(state, dtype=torch.int64),
            "python_gauss": gauss, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: Dict[str, Any]) -> None:
    random.setstate((s["python_version"], tuple(s["python"].tolist()), s["python_gauss"]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# --------------------------------------------------------------------------- data loading
class SeededImages(Dataset):
    """`base[i]` for a key `(seed, i)`, with the augmentation RNG seeded by (seed, i): the same
    crop and flip for an image whichever worker or process loads it. The seed comes with the
    key (from `TrainBatches`), so persistent workers follow the epoch. Items: (image, label, i)."""

    def __init__(self, base: ImageDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]):
        seed, i = key
        with torch.random.fork_rng(devices=[]):      # the caller's CPU RNG is left untouched
            torch.default_generator.manual_seed(_mix(seed, i))
            return self.base[i]


class TrainBatches(Sampler[List[int]]):
    """This process's slice of the shuffled global batches of one epoch.

    Global batches are `batch_size` consecutive entries of a permutation drawn from `seed`;
    the last incomplete one is dropped when there is at least one full batch (Dassl). Process
    r of W takes entries [r*b, (r+1)*b) of each, b = batch_size / W. Entries are keys
    `(seed, index)` for `SeededImages`; `set_epoch(seed)` before each epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise RunError(f"optim.batch_size={batch_size} must be a multiple of the number of "
                           f"processes ({world}): it is the global batch, split over processes")
        if world > 1 and n < batch_size:
            raise RunError(f"{n} training images are fewer than one global batch "
                           f"(optim.batch_size={batch_size}) to split over {world} processes")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def __len__(self) -> int:
        return max(self.n // self.batch_size, 1)

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        b = self.batch_size // self.world
        for k in range(len(self)):
            batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
            batch = batch[self.rank * b:(self.rank + 1) * b] if self.world > 1 else batch
            yield [(self.seed, i) for i in batch]


class EvalBatches(Sampler[List[int]]):
    """Consecutive batches in list order; process r evaluates batches r, r+W, r+2W, ...

    Every image is evaluated exactly once, in the same batch as in a single-process run (so
    even batch-dependent methods, DCP `released`, give the same predictions)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def _batches(self) -> range:
        return range(self.rank, math.ceil(self.n / self.batch_size), self.world)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[List[int]]:
        for k in self._batches():
            yield list(range(k * self.batch_size, min((k + 1) * self.batch_size, self.n)))


def _collate_skip(items: list):
    """Batch the items that were decoded (`on_bad_image="skip"` gives None for the others)."""
    items = [x for x in items if x is not None]
    return default_collate(items) if items else None


def _loader(dataset: Dataset, batches: Sampler, cfg: Config, seed: int,
            persistent: bool = False) -> DataLoader:
    """Decoding and augmentation in `data.num_workers` worker processes (kept alive across
    epochs with `persistent`), pinned memory on CUDA."""
    skip = cfg.data.on_bad_image == "skip"
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      collate_fn=_collate_skip if skip else None,
                      pin_memory=torch.cuda.is_available(),
                      persistent_workers=persistent and workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def _batches(loader: DataLoader) -> Iterator:
    """The loader's batches, without the empty ones of `on_bad_image="skip"`."""
    return (b for b in loader if b is not None)


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model, cfg: Config, epoch: int, history: List[Dict[str, float]],
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, lr: float = 0.0) -> None:
    """Write a run checkpoint atomically; without `optimizer` a final (weights-only) one."""
    obj: Dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "method": cfg.method.name, "epoch": epoch,
        "config": to_dict(cfg), "history": history,
        "state_dict": {k: v.detach().to("cpu", copy=True)
                       for k, v in model.trainable_state_dict().items()}}
    if optimizer is not None:
        obj.update(optimizer=optimizer.state_dict(), lr=lr, rng=rng_state(),
                   scaler=scaler.state_dict() if scaler is not None else {})
    atomic_torch_save(obj, path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a run checkpoint (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"run checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # unreadable or refused (non-tensor globals): one clear error
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read this run checkpoint ({type(e).__name__}: "
                              f"{first})") from e
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


# --------------------------------------------------------------------------- training
def unused_parameters(model, image_size: int, ctx: Context) -> List[str]:
    """Names of trainable parameters that never receive a gradient (e.g. the text half of DCP
    `released`'s CMPA), found by one forward/backward on a dummy batch; the model's state
    (DCP's running mean) is restored afterwards."""
    saved = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    model.train()
    images = torch.zeros(2, 3, image_size, image_size, device=ctx.device)
    with ctx.autocast():
        logits = model(images)
    logits.float().sum().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved, strict=False)
    return names


def _ddp(model, image_size: int, ctx: Context) -> Tuple[nn.Module, List[nn.Parameter]]:
    """Wrap in DistributedDataParallel. Parameters that never get a gradient are frozen first
    (SGD would leave them unchanged anyway), so DDP needs no `find_unused_parameters`; they
    are returned so that the caller can unfreeze them after training."""
    from torch.nn.parallel import DistributedDataParallel
    names = unused_parameters(model, image_size, ctx)
    params = dict(model.named_parameters())
    frozen = [params[n].requires_grad_(False) for n in names]
    if names:
        log.info("%d trainable tensors never receive a gradient and are left out of training: "
                 "%s", len(names), ", ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids), frozen


def fit(model, data: Sequence[Datum], cfg: Config, run_dir: Path, ctx: Context,
        image_size: int, resume: bool = False, stop_after: int = 0) -> List[Dict[str, float]]:
    """Train `model`'s trainable parameters for `cfg.optim.epochs`; returns the per-epoch history
    [{"epoch", "loss", "accuracy", "lr"}]. Writes `last.pt` after every epoch and `final.pt`
    at the end (then `last.pt` is removed). `resume` continues from `last.pt`; `stop_after=k`
    raises `Stopped` once k epochs are done and saved (a controlled kill)."""
    o = cfg.optim
    if not data:
        raise RunError("no training images (the few-shot draw is empty)")
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.loss_scaling)
    history: List[Dict[str, float]] = []
    start = 0
    last = run_dir / LAST
    if resume and last.is_file():
        ck = load_checkpoint(last)
        check_resumable(ck["config"], to_dict(cfg), last)
        model.load_trainable_state_dict(ck["state_dict"])
        optimizer.load_state_dict(ck["optimizer"])
        if ck["scaler"]:
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        start, history = ck["epoch"], list(ck["history"])
        log.info("resuming from %s: %d of %d epochs done", last, start, o.epochs)

    net, frozen = _ddp(model, image_size, ctx) if ctx.distributed else (model, [])
    images = ImageDataset(data, build_transform(True, image_size, cfg.data.crop_scale),
                          cfg.data.on_bad_image)
    batches = TrainBatches(len(images), o.batch_size, epoch_seed(cfg.seed, start), ctx.rank, ctx.world)
    loader = _loader(SeededImages(images), batches, cfg, cfg.seed, persistent=True)
    began = time.time()
    for epoch in range(start, o.epochs):
        lr = lr_at_epoch(epoch, o.lr, o.epochs, o.warmup_epochs, o.warmup_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches.set_epoch(epoch_seed(cfg.seed, epoch))
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = Progress(_batches(loader), desc=f"epoch {epoch + 1}/{o.epochs}", total=len(loader),
                       enabled=ctx.main)
        for x, y, _ in bar:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(dim=-1) == y).sum())
            seen += len(y)
            bar.set(loss=loss_sum / seen, acc=100.0 * correct / seen, lr=lr)
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                        "accuracy": 100.0 * correct / max(seen, 1), "lr": lr})
        done = epoch + 1
        if ctx.main:
            save_checkpoint(last, model, cfg, done, history, optimizer, scaler, lr)
        ctx.barrier()
        per_epoch = (time.time() - began) / (done - start)
        log.info("epoch %d/%d: loss %.4f, train accuracy %.2f%%, lr %.3e (%.1fs/epoch, about "
                 "%s left)", done, o.epochs, history[-1]["loss"], history[-1]["accuracy"], lr,
                 per_epoch, _clock(per_epoch * (o.epochs - done)))
        if stop_after and done == stop_after and done < o.epochs:
            raise Stopped(f"stopped after epoch {done} of {o.epochs} as asked (--stop-after); "
                          f"continue with --resume")
    for p in frozen:
        p.requires_grad_(True)
    if ctx.main:
        save_checkpoint(run_dir / FINAL, model, cfg, o.epochs, history)
        if last.is_file():
            last.unlink()
    ctx.barrier()
    return history


# Keys whose change makes a resumed run a different experiment.
_RESUME_KEYS = ("clip", "method", "optim", "seed", "precision", "protocol", "data.dataset",
                "data.shots", "data.subsample", "data.split_file", "data.image_size")


def check_resumable(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    """Raise RunError naming the keys where the checkpoint's config differs from this run's."""
    def get(d, key):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d
    diff = [k for k in _RESUME_KEYS if get(saved, k) != get(current, k)]
    if diff:
        raise RunError(f"{path} was written with another setting ({', '.join(diff)} differ): "
                       "resume with the same config, or start over with --force")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model, data: Sequence[Datum], cfg: Config, ctx: Context, image_size: int,
            desc: str = "test") -> Optional[Tensor]:
    """Predicted labels (N,) for `data` in list order (-1 for images skipped as undecodable),
    on rank 0; None on the other ranks. Each image is evaluated by exactly one process.

    With `eval.speedups` the image-independent part (`model.precompute()`) is computed once;
    without, every batch recomputes everything from 77-token text, like the released code.
    """
    if not data:
        raise RunError(f"{desc}: the test split has no images")
    model.eval()
    speedups = model.speedups
    model.speedups = cfg.eval.speedups
    try:
        with ctx.autocast():
            cache = model.precompute() if cfg.eval.speedups else None
        images = ImageDataset(data, build_transform(False, image_size), cfg.data.on_bad_image)
        batches = EvalBatches(len(images), cfg.eval.batch_size, ctx.rank, ctx.world)
        loader = _loader(images, batches, cfg, 0)
        idx, preds = [], []
        for x, _, i in Progress(_batches(loader), desc=desc, total=len(loader), enabled=ctx.main):
            with ctx.autocast():
                logits = model(x.to(ctx.device), cache) if cache is not None else model(x.to(ctx.device))
            preds.append(logits.argmax(dim=-1).cpu())
            idx.append(i)
    finally:
        model.speedups = speedups
    idx_t = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
    pred_t = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    if ctx.distributed:
        parts: List[Any] = [None] * ctx.world
        dist.all_gather_object(parts, (idx_t, pred_t))
        if not ctx.main:
            return None
        idx_t = torch.cat([p[0] for p in parts])
        pred_t = torch.cat([p[1] for p in parts])
    out = torch.full((len(data),), -1, dtype=torch.long)
    if len(set(idx_t.tolist())) != len(idx_t):
        raise RuntimeError("an image was evaluated twice: the evaluation batches overlap")
    out[idx_t] = pred_t
    return out
