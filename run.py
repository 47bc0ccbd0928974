#!/usr/bin/env python
"""Train and evaluate prompt learning on a frozen CLIP; collect results.

    python run.py demo                                                      # offline demo
    python run.py --cfg configs/dcp_vitb16.yaml --data /data --dataset dtd --shots 16 --seed 1 2 3
    python run.py --cfg configs/dcp_vitb16.yaml --data /data/imagenet       # dataset recognised
    python run.py --cfg configs/coop_vitb16.yaml --data /data --dataset dtd optim.lr=0.001
    python run.py --cfg configs/dcp_vitb16.yaml --data /data --dry-run      # check, write nothing
    python run.py --eval-only --model-dir output/fewshot/dtd/dcp-1a2b3c4d/shots16/seed1
    torchrun --nproc_per_node 4 run.py --cfg ...                            # DistributedDataParallel
    python run.py aggregate output                                          # mean ± std table

See README.md, "Running experiments", and docs/design.md for the road through a run.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

log = logging.getLogger("dcp.run")

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")

PRECEDENCE = """\
precedence (lowest first): the config files (a `_base_` chain, then each --cfg in order),
key=value overrides, then the options --data/--dataset/--protocol/--clip/--output. A value set
explicitly wins over one derived from other keys: optim.epochs set on the command line (or in a
later file) replaces the optim.epochs_by_shots table below it; data.image_size: 0 means the
checkpoint's resolution and method.fusion: "" the variant's fusion only while left at that value.
The log says which epochs are in force and why.
exit status: 0 done (also when every run was already finished), 2 bad input (one line naming
the key, path or layout), 3 stopped by --stop-after, 130 interrupted (Ctrl-C)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PRECEDENCE,
        description="Train and evaluate a prompt-learning method on CLIP. Extra `key=value` "
        "arguments override config keys (e.g. optim.lr=0.002 method.depth=9). "
        "`python run.py demo` runs the offline demo; `python run.py aggregate OUTPUT_ROOT` "
        "tabulates finished runs.")
    p.add_argument("--cfg", action="append", default=[], metavar="FILE",
                   help="config YAML (repeatable: later files override earlier ones)")
    p.add_argument("--data", metavar="PATH", help="data root, or one dataset's folder")
    p.add_argument("--dataset", metavar="NAME", help="dataset name (default: recognised from --data)")
    p.add_argument("--shots", type=int, nargs="+", metavar="K",
                   help="shots per class (several: one run each)")
    p.add_argument("--seed", type=int, nargs="+", metavar="S", help="seeds (several: one run each)")
    p.add_argument("--protocol", metavar="NAME",
                   help="fewshot | base2novel | cross_dataset | domain_generalization")
    p.add_argument("--clip", metavar="NAME_OR_PATH",
                   help="CLIP model name, checkpoint file, or `miniworld` (the shipped tiny CLIP)")
    p.add_argument("--output", metavar="DIR", help="output root (default: ./output)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="import a plugin file (repeatable; ./plugins/*.py are always imported)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and print the resolved config, the data, the model and "
                        "the schedule; write nothing")
    p.add_argument("--eval-only", action="store_true", help="evaluate trained runs, do not train")
    p.add_argument("--model-dir", metavar="RUN",
                   help="with --eval-only: the trained run folder (or its final.pt) to evaluate; "
                        "its config.yaml is used when no --cfg is given")
    p.add_argument("--load-released", metavar="PATH",
                   help="start from (or, with --eval-only, evaluate) a checkpoint of the authors' "
                        "released code")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs")
    p.add_argument("--force", action="store_true",
                   help="start runs over even if their folder holds results")
    p.add_argument("--stop-after", type=_count, default=0, metavar="N",
                   help="stop after N epochs as if killed (to try --resume)")
    return p


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return n


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(options, key=value overrides): overrides may appear anywhere on the command line."""
    opts, overrides = [], []
    for a in argv:
        (overrides if _OVERRIDE.match(a) else opts).append(a)
    return opts, overrides


def build_config(args: argparse.Namespace, overrides: List[str]):
    """Config files, then key=value overrides, then the explicit options."""
    from dcp.config import ConfigError, load_config
    from dcp.rundir import RunFolder
    files = list(args.cfg)
    if not files and args.model_dir:
        run = Path(args.model_dir).expanduser()
        files = [(run.parent if run.is_file() else run) / RunFolder.CONFIG]
    if not files:
        raise ConfigError("no config: pass --cfg FILE (e.g. configs/dcp_vitb16.yaml), or run "
                          "`python run.py demo` for the offline demo")
    flags = {"data.root": args.data, "data.dataset": args.dataset, "protocol": args.protocol,
             "clip": args.clip, "output": args.output}
    quoted = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return load_config(files, overrides + quoted)


class _Console(logging.StreamHandler):
    """Log lines to whatever `sys.stderr` is now (main() may be called again in-process)."""
    dcp_console = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_console_logging() -> None:
    logger = logging.getLogger("dcp")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "dcp_console", False) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def aggregate_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run.py aggregate",
                                description="mean ± std over seeds of every run under OUTPUT_ROOT; "
                                            "writes OUTPUT_ROOT/summary.md and summary.csv")
    p.add_argument("root", metavar="OUTPUT_ROOT")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="import a plugin file, e.g. one registering a protocol (repeatable; "
                        "./plugins/*.py are always imported)")
    args = p.parse_args(argv)
    from dcp.protocols import aggregate
    from dcp.registry import load_plugins
    load_plugins(extra=args.plugin)
    md, text = aggregate(args.root)
    print(md)
    print(text, end="")
    return 0


def demo_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run.py demo", description="The offline demo: zero-shot "
                                "CLIP, then DCP with 8 shots, on the shipped mini-world CLIP.")
    p.add_argument("--output", default="output/demo", metavar="DIR", help="(default: output/demo)")
    p.add_argument("--cfg", default=str(Path(__file__).resolve().parent / "configs" / "demo.yaml"),
                   metavar="FILE", help="the method's config (default: configs/demo.yaml)")
    options, overrides = split_overrides(argv)
    args = p.parse_args(options)
    from dcp.config import load_config
    from dcp.miniworld.demo import run_demo
    run_demo(load_config(args.cfg, overrides + [f"output={json.dumps(args.output)}"]))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_console_logging()
    from dcp.clip import CheckpointError
    from dcp.config import ConfigError
    from dcp.data import DatasetError
    from dcp.engine import Stopped
    from dcp.registry import PluginError
    from dcp.released import ReleasedCheckpointError
    from dcp.rundir import RunError
    user_errors = (ConfigError, FileNotFoundError, DatasetError, CheckpointError, RunError,
                   ReleasedCheckpointError, PluginError)
    try:
        if argv[:1] in (["aggregate"], ["demo"]):
            return (aggregate_main if argv[0] == "aggregate" else demo_main)(argv[1:])
        options, overrides = split_overrides(argv)
        args = parser().parse_args(options)
        from dcp.experiment import RunOptions, dry_run, run_all
        from dcp.registry import load_plugins
        load_plugins(extra=args.plugin)      # before the config: plugin fusions must validate
        cfg = build_config(args, overrides)
        if args.model_dir and not args.eval_only:
            raise ConfigError("--model-dir is for --eval-only (to continue a run use --resume)")
        opts = RunOptions(eval_only=args.eval_only, model_dir=args.model_dir or "",
                          load_released=args.load_released or "", resume=args.resume,
                          force=args.force, stop_after=args.stop_after)
        seeds, shots = args.seed or [cfg.seed], args.shots or [cfg.data.shots]
        if args.dry_run:
            print(dry_run(cfg, opts, seeds, shots))
        else:
            run_all(cfg, opts, seeds, shots)
    except SystemExit as e:             # argparse: usage error (2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    except Stopped as e:
        log.warning("%s", e)
        return 3
    except user_errors as e:
        log.error("error: %s", e)
        return 2
    except OSError as e:            # a path the system refuses (name too long, no permission)
        log.error("error: %s", (f"{e.filename}: {e.strerror}" if e.filename else str(e))[:300])
        return 2
    except KeyboardInterrupt:
        again = [a for a in argv if a != "--force"] + ([] if "--resume" in argv else ["--resume"])
        log.error("interrupted; what is saved stays (last.pt after every epoch). Continue with: "
                  "python run.py %s", " ".join(shlex.quote(a) for a in again))
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
