#!/usr/bin/env python
"""Speed and memory of every method at ViT-B/16 dimensions (random weights).

    python bench/bench.py                 # full run; writes bench/results/<device>.json
    python bench/bench.py --quick         # tiny dimensions, one repetition: checks the script
    python bench/bench.py --device cuda
    python bench/bench.py --report bench/results/cpu.json   # the README's tables from a result

Times are medians over repetitions after a warm-up; the two sides of a ratio are timed
alternately. Every exact speed-up is reported as a ratio to the same code with it switched
off, measured in the same run:
  text cut        class prompts cut to the longest EOS + 1 vs all 77 tokens
  cache           image-independent parts computed once per evaluation vs once per batch
  fused attention torch's scaled_dot_product_attention vs the plain softmax math
  all             all three on vs all off (the released code's evaluation)
A method's training step is also compared with the frozen towers' forward and backward
alone: every tower pass of one real step is recorded (its inputs and the prompt tokens
written before each block) and replayed without the method's own code.
Standard library and the project only.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dcp.methods.deep as deep_module  # noqa: E402
import dcp.prompting as prompting  # noqa: E402
from dcp.clip.model import CLIP, fused_attention  # noqa: E402
from dcp.config import config_from_dict  # noqa: E402
from dcp.methods import build_method  # noqa: E402
from dcp.methods.base import PromptModel  # noqa: E402

log = logging.getLogger("bench")

METHODS = {  # name -> method options (the ViT-B/16 defaults of docs/methods.md)
    "zeroshot": {"name": "zeroshot"}, "coop": {"name": "coop"}, "cocoop": {"name": "cocoop"},
    "vpt": {"name": "vpt"}, "ivlp": {"name": "ivlp"}, "maple": {"name": "maple"},
    "mudpt": {"name": "mudpt"}, "mudpt_released": {"name": "mudpt", "variant": "released"},
    "dcp": {"name": "dcp"}, "dcp_released": {"name": "dcp", "variant": "released"},
}
SHARED_NAMES = ROOT.parent / "shared" / "assets" / "coop-splits" / "imagenet_classnames.txt"


# ----------------------------------------------------------------------------- measuring
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps, warmup=1):
    """Median seconds of `fn()` over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_pair(fn_a, fn_b, device, reps):
    """Median seconds of `fn_a()` and of `fn_b()`, run alternately (a, b, a, b, ...) so that
    both see the same machine state: their ratio stays fair on a busy machine."""
    times = ([], [])
    for _ in range(reps):
        for fn, out in zip((fn_a, fn_b), times):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


class PeakMemory:
    """Peak memory above the level at entry, in MiB: CUDA allocator peak, or on CPU the
    resident set size sampled every 2 ms by a thread."""

    def __init__(self, device):
        self.device, self.mib = device, 0.0

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            self.base = self.peak = self._rss()
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif hasattr(self, "thread"):
            self.stop.set()
            self.thread.join()
            self.mib = (max(self.peak, self._rss()) - self.base) / 2**20


def peak_mib(fn, device):
    with PeakMemory(device) as m:
        fn()
    return round(m.mib, 1)


def activation_mib(fn):
    """MiB of tensors autograd keeps for the backward pass during `fn()` (deterministic on
    any device; what activation checkpointing reduces)."""
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return round(sum(seen.values()) / 2**20, 1)


# ----------------------------------------------------------------------------- the towers alone
class TowerRecorder:
    """Records the tower passes of one method call, then replays them on their own."""

    def __init__(self):
        self.calls = []
        self.orig = prompting.run_towers

    @contextmanager
    def recording(self):
        orig, calls = self.orig, self.calls

        def run_towers(clip, images=None, text=None, step=None, depth=0, checkpoint=False):
            written = {}

            def rec(i, v, t):
                out = step(i, v, t)
                written[i] = tuple(None if o is None else (o.detach(), o.requires_grad) for o in out)
                return out
            calls.append({"clip": clip, "images": images, "text": None if text is None else text.detach(),
                          "text_grad": text is not None and text.requires_grad, "written": written,
                          "depth": depth, "grad": torch.is_grad_enabled()})
            return orig(clip, images, text, rec if step is not None else None, depth, checkpoint)

        def frozen_image_features(model, images):
            calls.append({"clip": model.clip, "images": images, "text": None, "text_grad": False,
                          "written": {}, "depth": 0, "grad": False, "head": True})
            with torch.no_grad():
                return model.clip.encode_image(images)

        saved = (prompting.run_towers, deep_module.run_towers, PromptModel.frozen_image_features)
        prompting.run_towers = deep_module.run_towers = run_towers
        PromptModel.frozen_image_features = frozen_image_features
        try:
            yield
        finally:
            prompting.run_towers, deep_module.run_towers, PromptModel.frozen_image_features = saved

    def replay(self):
        """The recorded tower passes with the recorded prompts as plain leaf tensors."""
        total = 0.0
        for c in self.calls:
            with torch.set_grad_enabled(c["grad"]):
                if c.get("head"):
                    c["clip"].encode_image(c["images"])
                    continue
                w = {i: tuple(None if o is None else o[0].clone().requires_grad_(o[1] and c["grad"])
                              for o in pair) for i, pair in c["written"].items()}
                text = c["text"]
                if text is not None and c["text_grad"] and c["grad"]:
                    text = text.clone().requires_grad_(True)
                v, t = self.orig(c["clip"], c["images"], text,
                                 (lambda i, v, t, w=w: w.get(i, (None, None))) if w else None, c["depth"])
                if c["grad"]:
                    total = total + sum(x.float().sum() for x in (v, t) if x is not None)
        if torch.is_tensor(total) and total.requires_grad:
            total.backward()


# ----------------------------------------------------------------------------- set-up
def class_names(path, count):
    """ImageNet's class names when a classnames file is given or found; else synthetic names
    shaped like them (1-4 words, one long name) so the text lengths are comparable."""
    if path and Path(path).is_file():
        names = [line.strip().split(" ", 1)[-1] for line in open(path, encoding="utf-8") if line.strip()]
        return (names * (count // len(names) + 1))[:count], str(path)
    words = ["red", "great", "spotted", "grey", "shark", "heron", "tabby", "cat", "sports", "car",
             "wooden", "spoon", "snow", "leopard", "mountain", "bike", "coral", "reef", "steel", "drum"]
    names = [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(1 + i % 4)) for i in range(count)]
    names[0] = "three toed sloth with a very long and detailed name"
    return names, "synthetic"


def make_clip(quick, device):
    torch.manual_seed(0)
    if quick:   # a small ViT with the real vocabulary: checks the script, not the numbers
        clip = CLIP(128, 64, 4, 128, 16, 77, 49408, 128, 2, 4)
    else:       # ViT-B/16: embed 512, 224 px, 12 x 768 vision, 12 x 512 text
        clip = CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)
    return clip.eval().requires_grad_(False).to(device)


def make_model(clip, key, names, quick, device, **switches):
    """The method `key`, seeded (the same weights for every switch setting); `switches`:
    speedups, checkpointing (constructor options of the method)."""
    opts = dict(METHODS[key])
    if quick and opts["name"] not in ("zeroshot", "coop", "cocoop"):
        opts["depth"] = 4
    torch.manual_seed(1)
    model = build_method(config_from_dict({"method": opts}).method, clip, names, **switches)
    return model.to(device)


def train_step_fn(model, images, labels, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return step


# ----------------------------------------------------------------------------- benchmarks
def bench_train(clip, key, names, args, device, res):
    """Seconds per training step (forward, loss, backward, SGD step) and the activation memory
    it keeps; with 100 classes also the same step's frozen towers alone (recorded on the
    warm-up step, replayed without the method's code)."""
    model = make_model(clip, key, names, args.quick, device).train()
    if not model.num_trainable():
        return None
    batch = 1 if key == "cocoop" else 4
    images = torch.randn(batch, 3, res, res, device=device)
    labels = torch.arange(batch, device=device) % len(names)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    step = train_step_fn(model, images, labels, opt)
    out = {"batch": batch, "classes": len(names), "trainable": model.num_trainable()}
    rec = TowerRecorder()
    with rec.recording():             # the first (warm-up) step, measured for memory too
        out["activations_mib"] = activation_mib(step)
    if len(names) <= 100:
        out["step_s"], out["towers_s"] = timed_pair(step, rec.replay, device, args.reps)
        out["step_over_towers"] = round(out["step_s"] / out["towers_s"], 3)
    else:                             # 1000 classes: one step more, timed
        out["step_s"] = timed(step, device, args.reps_large, warmup=0)
        if key in args.checkpointed_methods:
            model = make_model(clip, key, names, args.quick, device, checkpointing=True).train()
            opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
            step = train_step_fn(model, images, labels, opt)
            out["checkpointed_activations_mib"] = activation_mib(step)
            out["checkpointed_step_s"] = timed(step, device, args.reps_large, warmup=0)
    if device.type == "cuda":
        out["peak_mib"] = peak_mib(step, device)
    return out


def bench_eval(clip, key, names, args, device, res, batch=16):
    """Images/s at test batch 16 with every speed-up on (text features and fused prompts
    computed once, then per batch only the image side) and, for --off-methods, all off."""
    model = make_model(clip, key, names, args.quick, device).eval()
    images = torch.randn(batch, 3, res, res, device=device)
    out = {"classes": len(names)}
    with torch.no_grad():
        if model.precompute() is None:        # CoCoOp: the text tower runs per image
            one = images[:1]
            t = timed(lambda: model(one), device, args.reps_large, warmup=0)
            out.update(per_image_s=t, images_per_s=round(1 / t, 3), note="cost is per image (batch 1 measured)")
            return out
        cache = {}
        out["precompute_s"] = timed(lambda: cache.update(c=model.precompute()), device, args.reps_large, warmup=0)
        reps = args.reps_eval if len(names) <= 100 else args.reps_large
        out["batch_s"] = timed(lambda: model(images, cache["c"]), device, reps, warmup=int(len(names) <= 100))
        out["images_per_s"] = round(batch / out["batch_s"], 3)
        n_batches = args.test_images / batch
        out["images_per_s_whole_eval"] = round(args.test_images / (out["precompute_s"] + n_batches * out["batch_s"]), 3)
        if key in args.off_methods and len(names) > 100:
            reference = make_model(clip, key, names, args.quick, device, speedups=False).eval()
            with fused_attention(False):
                out["off_batch_s"] = timed(lambda: reference(images), device, args.reps_large, warmup=0)
            out["off_images_per_s"] = round(batch / out["off_batch_s"], 3)
            out["speedup_all"] = round(out["off_batch_s"] / out["batch_s"], 2)
            out["speedup_all_whole_eval"] = round(
                n_batches * out["off_batch_s"] / (out["precompute_s"] + n_batches * out["batch_s"]), 2)
    return out


def bench_isolated(clip, names, args, device, res):
    """Each exact speed-up against the same code with only it switched off."""
    out = {}
    maple = make_model(clip, "maple", names, args.quick, device).eval()
    uncut = make_model(clip, "maple", names, args.quick, device, speedups=False).eval()
    images = torch.randn(16, 3, res, res, device=device)
    with torch.no_grad():
        maple.precompute()                                  # warm-up
        cut, full = timed_pair(maple.precompute, uncut.precompute, device, args.reps_large)
        out["text_cut"] = {"what": f"text tower over {len(names)} classes, MaPLe n=2 'a photo of a {{}}.'",
                           "tokens": maple.texts.cut, "cut_s": cut, "77_tokens_s": full,
                           "speedup": round(full / cut, 2)}
        cache = maple.precompute()
        per_batch, recompute = timed_pair(lambda: maple(images, cache), lambda: maple(images),
                                          device, args.reps_large)
        out["cache"] = {"what": f"MaPLe eval batch of 16, {len(names)} classes", "cached_s": per_batch,
                        "recomputed_s": recompute, "speedup": round(recompute / per_batch, 2)}
        def plain_attention():
            with fused_attention(False):
                maple(images, cache)
        per_batch, plain = timed_pair(lambda: maple(images, cache), plain_attention, device,
                                      args.reps_eval)
        out["fused_attention"] = {"what": "MaPLe eval batch of 16 (image side)", "fused_s": per_batch,
                                  "plain_s": plain, "speedup": round(plain / per_batch, 2)}
    return out


def bench_loader(args, device, res, model_images_per_s):
    """Decode + augmentation throughput of the data pipeline (workers) against the model's."""
    from PIL import Image

    from dcp.data import Datum, batches, build_transform, train_loader
    with tempfile.TemporaryDirectory() as tmp:
        data = []
        g = torch.Generator().manual_seed(0)
        for i in range(args.loader_images):
            path = Path(tmp) / f"{i}.jpg"
            pixels = (torch.rand(375, 500, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(path, quality=90)     # ImageNet-like size
            data.append(Datum(str(path), i % 10, f"class {i % 10}"))
        loader = train_loader(data, build_transform(True, res), batch_size=32, seed=0,
                              num_workers=args.workers)
        for _ in batches(loader):     # start the (persistent) workers
            pass
        t = time.perf_counter()
        for epoch in range(2):
            loader.batch_sampler.set_epoch(epoch + 1)
            for _ in batches(loader):
                pass
        rate = 2 * len(loader) * 32 / (time.perf_counter() - t)     # full batches only
    return {"workers": args.workers, "images_per_s": round(rate, 2),
            "model_train_images_per_s": model_images_per_s,
            "loader_over_model": round(rate / model_images_per_s, 2) if model_images_per_s else None}


# ----------------------------------------------------------------------------- main
def table(results):
    rows = ["| method | train step, 100 cls (s) | / towers alone | activations MiB | train step, 1000 cls (s) | "
            "activations MiB, 1000 cls | eval img/s, 100 cls | eval img/s, 1000 cls | all speed-ups, 1000 cls |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results["methods"].items():
        t100, t1k = r.get("train_100") or {}, r.get("train_1000") or {}
        e100, e1k = r.get("eval_100") or {}, r.get("eval_1000") or {}
        cell = lambda d, k: "-" if d.get(k) is None else f"{d[k]:.3g}"
        rows.append(f"| {key} | {cell(t100, 'step_s')} | {cell(t100, 'step_over_towers')} | "
                    f"{cell(t100, 'activations_mib')} | {cell(t1k, 'step_s')} | "
                    f"{cell(t1k, 'activations_mib')} | {cell(e100, 'images_per_s')} | "
                    f"{cell(e1k, 'images_per_s')} | "
                    f"{'-' if e1k.get('speedup_all') is None else str(e1k['speedup_all']) + 'x'} |")
    return "\n".join(rows)


def _s(x: float) -> str:
    return f"{x:.1f} s" if x < 100 else f"{x:.0f} s"


def _mib(x: float) -> str:
    return f"{x:,.0f} MiB"


def readme(r: dict) -> str:
    """The README's "Speed" tables and target line, from one results JSON."""
    iso, methods = r["isolated"], r["methods"]
    out = [f"{r['threads']} CPU threads, torch {r['torch']}, {r['device']}, "
           f"{r['elapsed_s'] / 60:.1f} minutes for the whole run:", "",
           "| exact speed-up (all others on) | off | on | off / on |", "|---|---:|---:|---:|"]
    rows = [("text cut to the longest EOS + 1 ({} instead of 77 tokens): text tower over 1000 class "
             "names, MaPLe's \"a photo of a {{}}.\"".format(iso["text_cut"]["tokens"]),
             iso["text_cut"]["77_tokens_s"], iso["text_cut"]["cut_s"], iso["text_cut"]["speedup"]),
            ("image-independent parts once per evaluation: MaPLe, a test batch of 16, 1000 classes",
             iso["cache"]["recomputed_s"], iso["cache"]["cached_s"], iso["cache"]["speedup"]),
            ("fused attention (`scaled_dot_product_attention`): the same batch's image side",
             iso["fused_attention"]["plain_s"], iso["fused_attention"]["fused_s"],
             iso["fused_attention"]["speedup"])]
    out += [f"| {what} | {_s(off)} | {_s(on)} | **{x}x** |" for what, off, on, x in rows]
    out += ["", "All speed-ups on against all off (77 tokens and class prompts re-encoded for every "
            "batch, as the released code evaluates), test batch 16, 1000 classes:", "",
            "| method | all off, per batch | all on, per batch | off / on |", "|---|---:|---:|---:|"]
    for key, m in methods.items():
        e = m.get("eval_1000") or {}
        if e.get("speedup_all"):
            out.append(f"| {key} | {_s(e['off_batch_s'])} | {_s(e['batch_s'])} (+ "
                       f"{e['precompute_s']:.0f} s once) | **{e['speedup_all']}x** |")
    out += ["", "| method | train step, 100 classes | ÷ frozen towers alone | activations | "
            "train step, 1000 classes | activations | checkpointed, 1000 classes | "
            "eval, 100 classes | eval, 1000 classes |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, m in methods.items():
        t1, tk = m.get("train_100") or {}, m.get("train_1000") or {}
        e1, ek = m.get("eval_100") or {}, m.get("eval_1000") or {}
        ck = (f"{_s(tk['checkpointed_step_s'])}, {_mib(tk['checkpointed_activations_mib'])}"
              if "checkpointed_step_s" in tk else "-")
        out.append(" | ".join([
            f"| {key}", _s(t1["step_s"]) if t1 else "-",
            f"{t1['step_over_towers']:.2f}" if t1 else "-", _mib(t1["activations_mib"]) if t1 else "-",
            _s(tk["step_s"]) if tk else "-", _mib(tk["activations_mib"]) if tk else "-", ck,
            f"{e1['images_per_s']:.2f} img/s", f"{ek['images_per_s']:.3g} img/s"]) + " |")
    ratios = {k: m["train_100"]["step_over_towers"] for k, m in methods.items() if m.get("train_100")}
    alls = [m["eval_1000"]["speedup_all"] for m in methods.values() if m.get("eval_1000", {}).get("speedup_all")]
    worst = max(ratios, key=ratios.get)
    out += ["", f"Targets: all speed-ups ≥ 10x at 1000 classes ({', '.join(f'{a}x' for a in alls)}); "
            f"text cut ≥ 3x ({iso['text_cut']['speedup']}x); every training step ≤ 1.3x its frozen "
            f"towers (largest: {ratios[worst]:.3f}, {worst}): "
            f"{'all hold' if all(r['targets'].values()) else 'NOT all hold: ' + str(r['targets'])}. "
            f"Loader: {r['loader']['images_per_s']:.0f} images/s with {r['loader']['workers']} workers, "
            f"{r['loader']['loader_over_model']:.0f}x what the MaPLe training step consumes."]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny dimensions, one repetition")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=2,
                   help="repetitions of a 100-class training step (alternating with the towers alone)")
    p.add_argument("--reps-eval", type=int, default=2, help="repetitions of a cached evaluation batch")
    p.add_argument("--reps-large", type=int, default=1, help="repetitions of the 1000-class ones")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--off-methods", nargs="*", default=["maple", "dcp_released"],
                   help="methods whose 1000-class evaluation is also timed with every speed-up off")
    p.add_argument("--checkpointed-methods", nargs="*", default=["maple", "dcp"],
                   help="methods whose 1000-class training step is also timed with activation "
                        "checkpointing (a few minutes each on a CPU)")
    p.add_argument("--classnames", default=str(SHARED_NAMES), help="ImageNet classnames.txt")
    p.add_argument("--test-images", type=int, default=50000, help="test-set size for whole-eval rates")
    p.add_argument("--loader-images", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="")
    p.add_argument("--report", metavar="JSON", help="print the README's tables from a results file and exit")
    args = p.parse_args(argv)
    if args.report:
        print(readme(json.loads(Path(args.report).read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.reps, args.reps_eval, args.reps_large, args.loader_images = 1, 1, 1, 16
    device = torch.device(args.device)
    start = time.perf_counter()
    clip = make_clip(args.quick, device)
    res = clip.visual.input_resolution
    few, many = (20, 200) if args.quick else (100, 1000)
    names1k, source = class_names(args.classnames, many)
    names100 = names1k[:few]
    results = {"device": str(device), "cpu": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "model": "tiny (quick)" if args.quick else "ViT-B/16 dimensions, random weights",
               "classnames": source, "reps": args.reps, "reps_large": args.reps_large, "methods": {}}
    results["isolated"] = bench_isolated(clip, names1k, args, device, res)
    log.info("isolated speed-ups: %s", {k: v["speedup"] for k, v in results["isolated"].items()})
    for key in args.methods:
        r = results["methods"][key] = {}
        for label, names in (("100", names100), ("1000", names1k)):      # (20, 200) with --quick
            r[f"train_{label}"] = bench_train(clip, key, names, args, device, res)
            r[f"eval_{label}"] = bench_eval(clip, key, names, args, device, res)
            log.info("%s %s classes: train %s | eval %s", key, label, r.get(f"train_{label}"), r[f"eval_{label}"])
    maple_train = (results["methods"].get("maple") or {}).get("train_100") or {}
    results["loader"] = bench_loader(args, device, res,
                                     round(4 / maple_train["step_s"], 3) if maple_train else None)
    results["elapsed_s"] = round(time.perf_counter() - start, 1)
    ratios = [r["train_100"]["step_over_towers"] for r in results["methods"].values()
              if r.get("train_100")]
    alls = [r["eval_1000"]["speedup_all"] for r in results["methods"].values()
            if r.get("eval_1000", {}).get("speedup_all")]
    results["targets"] = {
        "eval_1000_all_speedups_at_least_10x": bool(alls) and min(alls) >= 10,
        "text_cut_at_least_3x": results["isolated"]["text_cut"]["speedup"] >= 3,
        "train_step_at_most_1.3x_towers": bool(ratios) and max(ratios) <= 1.3,
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"{device.type}{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)
    print(table(results))
    iso = results["isolated"]
    print(f"\ntext cut {iso['text_cut']['speedup']}x ({iso['text_cut']['tokens']} vs 77 tokens), "
          f"cache {iso['cache']['speedup']}x, fused attention {iso['fused_attention']['speedup']}x; "
          f"loader {results['loader']['images_per_s']} img/s with {args.workers} workers "
          f"({results['loader']['loader_over_model']}x the MaPLe training step's need)")
    print(f"targets: {results['targets']}; {results['elapsed_s']} s; written to {out}")
    return 0 if all(results["targets"].values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
