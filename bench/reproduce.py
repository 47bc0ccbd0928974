#!/usr/bin/env python
"""The run.py commands that reproduce a table of the DCP, MuDPT or MaPLe paper.

    python bench/reproduce.py --list                          # the tables
    python bench/reproduce.py dcp-fewshot --data /data        # print the commands (a shell script)
    python bench/reproduce.py maple-b2n --data /data --clip /ckpt/ViT-B-16.pt --run

For a table it prints what must be on disk (the dataset folders under the data root, the CLIP
ViT-B/16 checkpoint) and one `python run.py --cfg configs/X.yaml --data ROOT --dataset D
--protocol P --shots K --seed S --output OUT` per method x dataset x shots x seed (seeds 1, 2, 3;
zero-shot CLIP, which trains nothing and draws nothing, once), then `python run.py aggregate
OUT`, which tabulates mean ± std over the seeds. `--run` executes them one after the other from
the project folder and stops at the first failure; finished runs are skipped by run.py, so an
interrupted table continues where it stopped.

Presets: each method's ViT-B/16 config (docs/methods.md, "The family"); the CoOp rows use
CoOp's `ctxv1` setting (4 context vectors from "a photo of a": configs/coop_ctxv1_vitb16.yaml,
and configs/coop_ctxv1_vitb16_imagenet.yaml, 50 epochs, for ImageNet); MaPLe's cross-dataset and
domain-generalisation rows use configs/maple_xd_vitb16.yaml. `commands()` is the function the
tests call. Only the standard library is imported here.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

ROOT = Path(__file__).resolve().parents[1]

# The eleven benchmark datasets, in the order the papers' tables list them.
BENCHMARK = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
             "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
CROSS_TARGETS = BENCHMARK[1:]                       # cross-dataset: trained on ImageNet
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
# Folder of each dataset under the data root (README, "Datasets"; CoOp's DATASETS.md).
FOLDERS = {"imagenet": "imagenet", "caltech101": "caltech-101", "oxford_pets": "oxford_pets",
           "stanford_cars": "stanford_cars", "oxford_flowers": "oxford_flowers",
           "food101": "food-101", "fgvc_aircraft": "fgvc_aircraft", "sun397": "sun397",
           "dtd": "dtd", "eurosat": "eurosat", "ucf101": "ucf101", "imagenetv2": "imagenetv2",
           "imagenet_sketch": "imagenet-sketch", "imagenet_a": "imagenet-adversarial",
           "imagenet_r": "imagenet-rendition"}
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
TRANSFER = ("cross_dataset", "domain_generalization")   # trained on ImageNet, 16 shots


@dataclass(frozen=True)
class Preset:
    """A method's config file (under configs/), and where another one replaces it."""
    cfg: str
    imagenet: str = ""            # used when the training set is ImageNet
    transfer: str = ""            # used for cross-dataset / domain generalisation

    def config(self, dataset: str, protocol: str) -> str:
        name = ((protocol in TRANSFER and self.transfer) or (dataset == "imagenet" and self.imagenet)
                or self.cfg)
        return f"configs/{name}.yaml"


PRESETS: Dict[str, Preset] = {
    "zeroshot": Preset("zeroshot_vitb16"),
    "coop": Preset("coop_ctxv1_vitb16", imagenet="coop_ctxv1_vitb16_imagenet"),   # ctxv1
    "cocoop": Preset("cocoop_vitb16"),
    "vpt": Preset("vpt_vitb16"),
    "ivlp": Preset("ivlp_vitb16"),
    "maple": Preset("maple_vitb16", transfer="maple_xd_vitb16"),
    "mudpt": Preset("mudpt_vitb16"),
    "mudpt_released": Preset("mudpt_released_vitb16"),
    "dcp": Preset("dcp_vitb16"),
    "dcp_released": Preset("dcp_released_vitb16"),
}


@dataclass(frozen=True)
class Table:
    paper: str
    title: str
    protocol: str
    datasets: Tuple[str, ...]     # training datasets
    shots: Tuple[int, ...]
    methods: Tuple[str, ...]      # keys of PRESETS, in the table's row order
    targets: Tuple[str, ...] = ()  # other test sets (cross-dataset, domain generalisation)


_DCP = ("zeroshot", "coop", "cocoop", "vpt", "ivlp", "maple", "dcp", "dcp_released")
_MUDPT = ("zeroshot", "coop", "cocoop", "vpt", "ivlp", "maple", "mudpt", "mudpt_released")
TABLES: Dict[str, Table] = {
    "dcp-fewshot": Table("DCP (ACL 2023 Findings)", "few-shot classification, 1/2/4/8/16 shots, "
                         "11 datasets", "fewshot", BENCHMARK, SHOTS, _DCP),
    "dcp-dg": Table("DCP (ACL 2023 Findings)", "robustness to domain shift: ImageNet, 16 shots, "
                    "tested on ImageNet-V2, -Sketch, -A, -R", "domain_generalization",
                    ("imagenet",), (16,), _DCP, DG_TARGETS),
    "mudpt-fewshot": Table("MuDPT (ICME 2023)", "few-shot recognition, 1/2/4/8/16 shots, "
                           "11 datasets", "fewshot", BENCHMARK, SHOTS, _MUDPT),
    "mudpt-b2n": Table("MuDPT (ICME 2023)", "base-to-novel generalisation, 16 shots of the base "
                       "half, 11 datasets", "base2novel", BENCHMARK, (16,), _MUDPT),
    "mudpt-xd": Table("MuDPT (ICME 2023)", "cross-dataset transfer: ImageNet, 16 shots, tested "
                      "on the 10 other datasets", "cross_dataset", ("imagenet",), (16,), _MUDPT,
                      CROSS_TARGETS),
    "mudpt-dg": Table("MuDPT (ICME 2023)", "domain generalisation: ImageNet, 16 shots, tested on "
                      "ImageNet-V2, -Sketch, -A, -R", "domain_generalization", ("imagenet",),
                      (16,), _MUDPT, DG_TARGETS),
    "maple-b2n": Table("MaPLe (CVPR 2023)", "base-to-novel generalisation, 16 shots of the base "
                       "half, 11 datasets", "base2novel", BENCHMARK, (16,),
                       ("zeroshot", "coop", "cocoop", "maple")),
}

Overrides = Union[Sequence[str], Mapping[str, Sequence[str]]]


def _extra(overrides: Optional[Overrides], method: str) -> List[str]:
    """`key=value` overrides for `method`: a list applies to every method; a mapping gives
    them per method key, with "*" for every method."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.get("*", ())) + list(overrides.get(method, ()))
    return list(overrides)


def table(name: str) -> Table:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
    return TABLES[name]


def commands(table_name: str, data_root, output, *, clip: Optional[str] = None,
             methods: Optional[Sequence[str]] = None, datasets: Optional[Sequence[str]] = None,
             seeds: Sequence[int] = SEEDS, overrides: Optional[Overrides] = None) -> List[List[str]]:
    """The commands of table `table_name`, as argument lists: one `python run.py ...` per
    method x training dataset x shots x seed (zero-shot CLIP: shots 0, the first seed only),
    then `python run.py aggregate OUTPUT`. `methods` / `datasets` restrict the table's own;
    `clip` adds `--clip`; `overrides` adds `key=value` arguments (see `_extra`)."""
    t = table(table_name)
    chosen = list(t.methods if methods is None else methods)
    wrong = [m for m in chosen if m not in t.methods]
    if wrong:
        raise ValueError(f"{table_name} has no method {', '.join(wrong)}; its methods: "
                         f"{', '.join(t.methods)}")
    sets = list(t.datasets if datasets is None else datasets)
    wrong = [d for d in sets if d not in t.datasets]
    if wrong:
        raise ValueError(f"{table_name} trains on {', '.join(t.datasets)}, not {', '.join(wrong)}")
    out: List[List[str]] = []
    for method in chosen:
        for dataset in sets:
            shots, run_seeds = ((0,), tuple(seeds)[:1]) if method == "zeroshot" else (t.shots, seeds)
            for k in shots:
                for seed in run_seeds:
                    cmd = ["python", "run.py", "--cfg", PRESETS[method].config(dataset, t.protocol),
                           "--data", str(data_root), "--dataset", dataset, "--protocol", t.protocol,
                           "--shots", str(k), "--seed", str(seed), "--output", str(output)]
                    if clip:
                        cmd += ["--clip", str(clip)]
                    out.append(cmd + _extra(overrides, method))
    out.append(["python", "run.py", "aggregate", str(output)])
    return out


def _is_file(clip: Optional[str]) -> bool:
    return bool(clip) and (os.sep in clip or "\\" in clip or clip.endswith(".pt"))


def clip_file(clip: Optional[str]) -> Tuple[str, Optional[Path]]:
    """(what is needed, the file it is) for `--clip` (default: the configs' ViT-B/16)."""
    if clip == "miniworld":
        return "CLIP miniworld (shipped in dcp/miniworld/)", ROOT / "dcp" / "miniworld" / "miniworld-clip.pt"
    if _is_file(clip):
        return f"CLIP checkpoint {clip} (--clip)", Path(clip).expanduser()
    name = clip or "ViT-B/16"
    cache = Path(os.environ.get("DCP_CLIP_CACHE") or Path.home() / ".cache" / "clip")
    path = cache / (name.replace("/", "-").replace("@", "-") + ".pt")
    return (f"CLIP {name}: {path} (cache: $DCP_CLIP_CACHE or ~/.cache/clip; downloaded there on "
            f"first use when absent and online; or give a file with --clip)"), path


def requirements(table_name: str, data_root, clip: Optional[str] = None,
                 datasets: Optional[Sequence[str]] = None) -> List[Tuple[str, bool]]:
    """(what must be on disk, whether it is there now) for table `table_name` (restricted to
    the training `datasets` if given): the dataset folders, then the CLIP checkpoint."""
    t = table(table_name)
    root = Path(str(data_root)).expanduser()
    names = dict.fromkeys(list(datasets or t.datasets) + list(t.targets))
    needs = [(f"{root / FOLDERS[d]}/  ({d}; layout: README.md, Datasets)",
              (root / FOLDERS[d]).is_dir()) for d in names]
    what, path = clip_file(clip)
    return needs + [(what, path is not None and path.is_file())]


def script(table_name: str, data_root, output, clip: Optional[str] = None, **kw) -> str:
    """The table's commands as a shell script, headed by what they need."""
    t = table(table_name)
    cmds = commands(table_name, data_root, output, clip=clip, **kw)
    lines = [f"# {table_name}: {t.paper}, {t.title}",
             f"# protocol {t.protocol}; {len(cmds) - 1} run{'' if len(cmds) == 2 else 's'}, "
             "then the table (run.py aggregate)",
             "# needs on disk ([x] found now, [ ] not found):"]
    lines += [f"#   [{'x' if ok else ' '}] {what}"
              for what, ok in requirements(table_name, data_root, clip, kw.get("datasets"))]
    lines += ["# run from the project folder: " + str(ROOT)]
    return "\n".join(lines + [shlex.join(c) for c in cmds]) + "\n"


def run_commands(cmds: Sequence[Sequence[str]]) -> int:
    """Run each command from the project folder (python = this interpreter); stop at the first
    failure and return its exit status."""
    for i, cmd in enumerate(cmds, 1):
        argv = [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]
        print(f"[{i}/{len(cmds)}] $ {shlex.join(cmd)}", flush=True)
        code = subprocess.run(argv, cwd=ROOT).returncode
        if code != 0:
            print(f"stopped: command {i} of {len(cmds)} exited with status {code}", file=sys.stderr)
            return code
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="tables:\n" + "\n".join(f"  {k:14s} {t.paper}: {t.title}"
                                                              for k, t in TABLES.items()))
    p.add_argument("table", nargs="?", choices=list(TABLES), metavar="TABLE",
                   help="one of: " + ", ".join(TABLES))
    p.add_argument("--list", action="store_true", help="list the tables and their methods")
    p.add_argument("--data", metavar="ROOT", help="data root holding the dataset folders")
    p.add_argument("--output", metavar="DIR", help="output root (default: output/reproduce/TABLE)")
    p.add_argument("--clip", metavar="NAME_OR_PATH",
                   help="CLIP model name or checkpoint file (default: the configs' ViT-B/16)")
    p.add_argument("--methods", nargs="+", metavar="M", help="only these of the table's methods")
    p.add_argument("--datasets", nargs="+", metavar="D", help="only these training datasets")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="S",
                   help="seeds (default: 1 2 3)")
    p.add_argument("--run", action="store_true",
                   help="run the commands one after the other; stop at the first failure")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.list or not args.table:
        for k, t in TABLES.items():
            print(f"{k}: {t.paper}, {t.title}\n    protocol {t.protocol}; methods {' '.join(t.methods)}")
        return 0
    if not args.data:
        p.error("--data ROOT is required: the folder holding the dataset folders")
    # the commands run from the project folder: paths the user gave are made absolute
    data = str(Path(args.data).expanduser().resolve())
    output = (str(Path(args.output).expanduser().resolve()) if args.output
              else f"output/reproduce/{args.table}")
    clip = str(Path(args.clip).expanduser().resolve()) if _is_file(args.clip) else args.clip
    kw = dict(methods=args.methods, datasets=args.datasets, seeds=args.seeds)
    try:
        text = script(args.table, data, output, clip, **kw)
    except ValueError as e:
        p.error(str(e))
    print(text, end="", flush=True)
    if not args.run:
        return 0
    missing = [what for what, ok in requirements(args.table, data, clip, args.datasets)[:-1] if not ok]
    if missing:
        print("not run: missing on disk:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    return run_commands(commands(args.table, data, output, clip=clip, **kw))


if __name__ == "__main__":
    sys.exit(main())
