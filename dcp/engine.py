"""The training and evaluation loops (the Dassl conventions: docs/methods.md, "Training").

    ctx = setup_context(cfg.precision)         # device, precision, DDP rank / world size
    history = fit(model, train_data, cfg, folder, ctx, image_size, resume=True)
    preds = predict(model, test_data, cfg, ctx, image_size)   # (N,) on rank 0, None elsewhere

All randomness of an epoch is a function of (seed, epoch) (`dcp.data.loader`) and `last.pt`
holds the RNG states, so a resumed run ends bit-exact like an uninterrupted one. Non-finite
losses, trained tensors or scores stop a run before anything is recorded as finished.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, to_dict
from .data import Datum, batches, build_transform, eval_loader, train_loader
from .rundir import RunError, RunFolder, check_resumable, load_checkpoint
from .utils import Progress, mix_seed

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Training stopped on purpose after some epochs (`--stop-after`), as if killed."""


def lr_at_epoch(epoch: int, lr: float, epochs: int, warmup_epochs: int = 1,
                warmup_lr: float = 1e-5) -> float:
    """LR of 0-based `epoch`: `warmup_lr` for the warm-up epochs, then Dassl's cosine
    (CosineAnnealingLR(T_max=epochs) stepped once per epoch after the warm-up)."""
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
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def main_first(self, make: Callable[[], Any]) -> Any:
        """`make()` on rank 0 first (a download, a recorded draw), then on the other ranks."""
        out = None
        for turn in (True, False):
            if self.main == turn:
                out = make()
            self.barrier()
        return out


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
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


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


# --------------------------------------------------------------------------- training
def _ddp(model, image_size: int, ctx: Context) -> Tuple[nn.Module, List[nn.Parameter]]:
    """Wrap in DistributedDataParallel. Trainable parameters that never get a gradient (e.g.
    the text half of DCP `released`'s CMPA; found by one forward/backward on a dummy batch,
    the model's state restored after) are frozen first, so DDP needs no
    `find_unused_parameters`; they are returned to be unfrozen after training."""
    from torch.nn.parallel import DistributedDataParallel
    saved = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    model.train()
    with ctx.autocast():
        logits = model(torch.zeros(2, 3, image_size, image_size, device=ctx.device))
    logits.float().sum().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved, strict=False)
    params = dict(model.named_parameters())
    frozen = [params[n].requires_grad_(False) for n in names]
    if names:
        log.info("%d trainable tensors never receive a gradient and are left out of training: "
                 "%s", len(names), ", ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids), frozen


def _restore(folder: RunFolder, model, optimizer, scaler, cfg: Config,
             epochs: int) -> Tuple[int, List[dict]]:
    """(epochs done, history) from `folder.last`, everything else restored in place."""
    ck = load_checkpoint(folder.last)
    check_resumable(ck["config"], to_dict(cfg), folder.last)
    model.load_trainable_state_dict(ck["state_dict"])
    optimizer.load_state_dict(ck["optimizer"])
    if ck["scaler"]:
        scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    log.info("resuming from %s: %d of %d epochs done", folder.last, ck["epoch"], epochs)
    return ck["epoch"], list(ck["history"])


def _diverged(what: str, lr: float, cfg: Config) -> RunError:
    return RunError(f"training diverged: {what} (lr {lr:g}, optim.lr={cfg.optim.lr:g}); nothing "
                    "is recorded as finished: lower optim.lr")


def _train_epoch(net, loader, optimizer, scaler, cfg: Config, ctx: Context, epoch: int,
                 epochs: int) -> Dict[str, float]:
    """One epoch at its lr; stops at the first non-finite loss. Returns its history entry."""
    o = cfg.optim
    lr = lr_at_epoch(epoch, o.lr, epochs, o.warmup_epochs, o.warmup_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loader.batch_sampler.set_epoch(mix_seed("dcp-epoch", cfg.seed, epoch))
    net.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = Progress(batches(loader, cfg.data.on_bad_image), desc=f"epoch {epoch + 1}/{epochs}",
                   total=len(loader), enabled=ctx.main)
    for step, (x, y, _) in enumerate(bar, 1):
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        if not math.isfinite(loss.item()):
            raise _diverged(f"loss {loss.item()} at epoch {epoch + 1}, step {step}", lr, cfg)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(dim=-1) == y).sum())
        seen += len(y)
        bar.set(loss=loss_sum / seen, acc=100.0 * correct / seen, lr=lr)
    if ctx.world > 1:                   # the epoch's history covers every process's share
        total = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(total)
        loss_sum, correct, seen = total[0].item(), int(total[1]), int(total[2])
    return {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
            "accuracy": 100.0 * correct / max(seen, 1), "lr": lr}


def _check_finite(model, cfg: Config, ctx: Context, image_size: int, epoch: int, epochs: int,
                  steps: int, lr: float) -> None:
    """Before an epoch is saved: its last update diverged if a trainable tensor is not finite,
    or (last epoch: no later loss would show it) the scores on a blank image are not."""
    bad = next((f"{n} is" for n, p in model.named_parameters()
                if p.requires_grad and not torch.isfinite(p).all()), None)
    if bad is None and epoch == epochs:
        model.eval()                      # eval mode: no running statistics move
        with torch.no_grad(), ctx.autocast():
            scores = model(torch.zeros(1, 3, image_size, image_size, device=ctx.device))
        bad = None if torch.isfinite(scores.float()).all() else "the model's scores are"
    if bad:
        raise _diverged(f"{bad} not finite after epoch {epoch}, step {steps}", lr, cfg)


def fit(model, data: Sequence[Datum], cfg: Config, folder: RunFolder, ctx: Context,
        image_size: int, resume: bool = False, stop_after: int = 0) -> List[Dict[str, float]]:
    """Train `model`'s trainable parameters for `optim.epochs_for(shots)` epochs; returns the
    history [{"epoch", "loss", "accuracy", "lr"}]. `resume` continues from `folder.last`;
    `stop_after=k` raises `Stopped` once k epochs are done and saved (a controlled kill)."""
    o, epochs = cfg.optim, cfg.optim.epochs_for(cfg.data.shots)
    if not data:
        raise RunError("no training images (the few-shot draw is empty)")
    if o.batch_size % ctx.world or (ctx.world > 1 and len(data) < o.batch_size):
        raise RunError(f"optim.batch_size={o.batch_size} is the global batch, split over "
                       f"{ctx.world} processes: it must be a multiple of that and at most the "
                       f"{len(data)} training images")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=o.lr, momentum=o.momentum,
                                weight_decay=o.weight_decay)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.loss_scaling)
    start, history = 0, []
    if resume and folder.last.is_file():
        start, history = _restore(folder, model, optimizer, scaler, cfg, epochs)
    net, frozen = _ddp(model, image_size, ctx) if ctx.world > 1 else (model, [])
    transform = build_transform(True, image_size, cfg.data.crop_scale)
    loader = train_loader(data, transform, o.batch_size, cfg.seed, cfg.data.num_workers,
                          ctx.rank, ctx.world, cfg.data.exif_transpose)
    began = time.time()
    for epoch in range(start, epochs):
        history.append(_train_epoch(net, loader, optimizer, scaler, cfg, ctx, epoch, epochs))
        done, last = epoch + 1, history[-1]
        _check_finite(model, cfg, ctx, image_size, done, epochs, len(loader), last["lr"])
        if ctx.main:
            folder.save_checkpoint(folder.last, model, cfg, done, history, lr=last["lr"],
                                   optimizer=optimizer.state_dict(), rng=rng_state(),
                                   scaler=scaler.state_dict() if ctx.loss_scaling else {})
        ctx.barrier()
        per_epoch = (time.time() - began) / (done - start)
        left = datetime.timedelta(seconds=int(per_epoch * (epochs - done)))
        log.info("epoch %d/%d: loss %.4f, train accuracy %.2f%%, lr %.3e (%.1fs/epoch, about "
                 "%s left)", done, epochs, last["loss"], last["accuracy"], last["lr"], per_epoch, left)
        if stop_after and done == stop_after and done < epochs:
            raise Stopped(f"stopped after epoch {done} of {epochs} as asked (--stop-after); "
                          "continue with --resume")
    for p in frozen:
        p.requires_grad_(True)
    if ctx.main:
        folder.finish_training(model, cfg, epochs, history)
    ctx.barrier()
    return history


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model, data: Sequence[Datum], cfg: Config, ctx: Context, image_size: int,
            desc: str = "test") -> Optional[Tensor]:
    """Predicted labels (N,) for `data` in list order (-1 for images skipped as undecodable),
    on rank 0; None on the other ranks. Each image is evaluated by exactly one process; a
    model built with `speedups` computes its image-independent part once (`precompute()`)."""
    if not data:
        raise RunError(f"{desc}: the test split has no images")
    model.eval()
    with ctx.autocast():
        cache = model.precompute() if model.speedups else None
    loader = eval_loader(data, build_transform(False, image_size), cfg.eval.batch_size,
                         cfg.data.num_workers, ctx.rank, ctx.world, cfg.data.exif_transpose)
    idx, preds = [], []
    for x, _, i in Progress(batches(loader, cfg.data.on_bad_image), desc=desc, total=len(loader),
                            enabled=ctx.main):
        with ctx.autocast():
            logits = model(x.to(ctx.device), cache) if cache is not None else model(x.to(ctx.device))
        if not torch.isfinite(logits).all():
            raise RunError(f"{desc}: the model gives non-finite scores (nan or inf): its trained "
                           "tensors are broken (training diverged: lower optim.lr); no metrics "
                           "are written")
        preds.append(logits.argmax(dim=-1).cpu())
        idx.append(i)
    idx_t = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
    pred_t = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    if ctx.world > 1:
        parts: List[Any] = [None] * ctx.world
        dist.all_gather_object(parts, (idx_t, pred_t))
        if not ctx.main:
            return None
        idx_t = torch.cat([p[0] for p in parts])
        pred_t = torch.cat([p[1] for p in parts])
    if len(set(idx_t.tolist())) != len(idx_t):
        raise RuntimeError("an image was evaluated twice: the evaluation batches overlap")
    out = torch.full((len(data),), -1, dtype=torch.long)
    out[idx_t] = pred_t
    return out


def classification_metrics(preds: Sequence[int], labels: Sequence[int],
                           num_classes: int) -> Dict[str, object]:
    """Top-1 accuracy, Dassl's macro-F1 (over the classes present in the labels), in %, and
    per-class accuracy (None for a class without images) of predictions (N,) against labels
    (N,); a prediction of -1 (image skipped) is dropped."""
    p = torch.as_tensor(list(preds), dtype=torch.long)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    keep = p >= 0
    skipped = int((~keep).sum())
    p, y = p[keep], y[keep]
    n = len(y)
    hit = p == y
    tp = torch.bincount(y[hit], minlength=num_classes).double()
    support = torch.bincount(y, minlength=num_classes).double()
    predicted = torch.bincount(p, minlength=num_classes).double()
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    per_class = [100.0 * float(t) / float(s) if s > 0 else None for t, s in zip(tp, support)]
    return {"accuracy": 100.0 * float(hit.sum()) / n if n else 0.0,
            "macro_f1": 100.0 * float(f1[support > 0].mean()) if n else 0.0,
            "num_images": n, "num_skipped": skipped, "per_class_accuracy": per_class}
