"""Command line of the mini world.

    python -m dcp.miniworld pretrain --out miniworld-clip.pt [--seed 0] [--steps 400] ...
    python -m dcp.miniworld make-data --root DATA [--task miniworld_shapes ...] [--force]
    python -m dcp.miniworld zeroshot [--clip PATH]
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("dcp.miniworld")


def parser() -> argparse.ArgumentParser:
    from .data import TASKS
    from .pretrain import Settings
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m dcp.miniworld",
                                description="The mini world: generated benchmarks and a tiny CLIP "
                                            "pre-trained on them in minutes on a CPU.")
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="pre-train a tiny CLIP contrastively on generated pairs",
                         description="Pre-train a tiny CLIP (OpenAI architecture) on generated "
                                     "image-caption pairs; write an OpenAI-format fp16 state dict "
                                     "and a JSON record beside it (2 CPU threads).")
    pre.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    pre.add_argument("--seed", type=int, default=d.seed, help=f"seed of weights and data ({d.seed})")
    pre.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps ({d.steps})")
    pre.add_argument("--batch-size", type=int, default=d.batch_size, help=f"pairs per step ({d.batch_size})")
    pre.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate ({d.lr})")
    pre.add_argument("--sketch-fraction", type=float, default=d.sketch_fraction,
                     help=f"share of sketch-domain pairs ({d.sketch_fraction})")
    pre.add_argument("--crop-fraction", type=float, default=d.crop_fraction,
                     help=f"share of pairs seen through a random crop and flip ({d.crop_fraction})")
    pre.add_argument("--curriculum", type=float, default=d.curriculum,
                     help=f"share of the steps whose captions name the shape only ({d.curriculum})")
    pre.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    pre.add_argument("--eval-every", type=int, default=d.eval_every,
                     help=f"zero-shot evaluation every N steps, 0 = only at the end ({d.eval_every})")
    data = sub.add_parser("make-data", help="write the mini-world benchmark folders",
                          description="Write <root>/<task>/images/ and split_<task>.json for the "
                                      "mini-world tasks (deterministic; existing up-to-date "
                                      "folders are kept).")
    data.add_argument("--root", required=True, type=Path, help="data root to write into")
    data.add_argument("--task", nargs="+", choices=sorted(TASKS), default=[], help="tasks (default: all)")
    data.add_argument("--force", action="store_true", help="rewrite existing folders")
    zs = sub.add_parser("zeroshot", help="zero-shot accuracy of a checkpoint on the benchmarks' test sets")
    zs.add_argument("--clip", type=Path, default=None, help="checkpoint (default: the shipped one)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args = parser().parse_args(argv)
    if args.command == "pretrain":
        from .pretrain import Settings, run
        s = Settings(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     sketch_fraction=args.sketch_fraction, crop_fraction=args.crop_fraction,
                     curriculum=args.curriculum, eval_every=args.eval_every)
        command = "python -m dcp.miniworld " + " ".join(shlex.quote(a) for a in argv)
        record = run(args.out, s, command, threads=args.threads)
        print(json.dumps({k: record[k] for k in ("zero_shot", "chance", "seconds", "bytes")}))
    elif args.command == "make-data":
        from .data import make_data
        make_data(args.root, args.task, force=args.force)
    else:
        import torch
        from ..clip import load
        from . import CHECKPOINT
        from .pretrain import ZeroShotSets
        torch.set_num_threads(2)
        model, _ = load(args.clip or CHECKPOINT, device="cpu")
        print(json.dumps(ZeroShotSets().accuracy(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
