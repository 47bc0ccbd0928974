"""Command line of the mini world: `python -m dcp.miniworld {pretrain,make-data,zeroshot} --help`."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..clip import load
from . import CHECKPOINT
from .data import TASKS, make_data
from .pretrain import Settings, ZeroShotSets, run


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m dcp.miniworld", description="The mini world: generated "
                                "benchmarks and a tiny CLIP pre-trained on them in minutes on a CPU.")
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="pre-train a tiny CLIP contrastively on generated pairs",
                         description="Pre-train a tiny CLIP (OpenAI architecture) on generated "
                                     "image-caption pairs; write an OpenAI-format fp16 state dict "
                                     "and a JSON record beside it.")
    pre.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    options = [o for o in fields(Settings) if "help" in o.metadata]      # see `pretrain.option`
    for o in options:
        pre.add_argument("--" + o.name.replace("_", "-"), type=type(o.default), default=o.default,
                         help=f"{o.metadata['help']} ({o.default})")
    pre.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    data = sub.add_parser("make-data", help="write the mini-world benchmark folders (deterministic; "
                          "up-to-date folders are kept)")
    data.add_argument("--root", required=True, type=Path, help="data root to write into")
    data.add_argument("--task", nargs="+", choices=sorted(TASKS), default=[], help="tasks (default: all)")
    data.add_argument("--force", action="store_true", help="rewrite existing folders")
    zs = sub.add_parser("zeroshot", help="zero-shot accuracy of a checkpoint on the benchmarks' test sets")
    zs.add_argument("--clip", type=Path, default=None, help="checkpoint (default: the shipped one)")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if args.command == "pretrain":
        settings = Settings(**{o.name: getattr(args, o.name) for o in options})
        record = run(args.out, settings, "python -m dcp.miniworld " + shlex.join(argv), args.threads)
        print(json.dumps({k: record[k] for k in ("zero_shot", "chance", "seconds", "bytes")}))
    elif args.command == "make-data":
        make_data(args.root, args.task, force=args.force)
    else:
        torch.set_num_threads(2)
        model, _ = load(args.clip or CHECKPOINT, device="cpu")
        print(json.dumps(ZeroShotSets().accuracy(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
