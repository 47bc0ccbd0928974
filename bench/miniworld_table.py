#!/usr/bin/env python
"""The mini-world results table: every method, through run.py and `run.py aggregate`.

    python bench/miniworld_table.py [--output output/miniworld_table] [--methods coop dcp ...]

Settings (seeds 1, 2, 3 each; presets in configs/miniworld/<method>.yaml):
    few-shot        miniworld_shapes_sketch (sketches of 8 shapes, prompted "a photo of a {}."),
                    K = 1, 2, 4, 8, 16 shots per class (zero-shot: K = 0)
    base-to-novel   miniworld_objects (40 colour-shape compounds), 16 shots of the 20 base
                    classes, tested on base and novel
    domain shift    trained on miniworld_shapes (photos, 16 shots), tested on miniworld_shapes_sketch

It generates the data (`python -m dcp.miniworld make-data`) into <output>/data, runs one run.py
process per method and protocol (finished runs are skipped, so an interrupted table resumes),
aggregates with `python run.py aggregate <output>` (summary.md, summary.csv) and writes
<output>/table.md: methods x settings, mean ± std over the seeds, with the time taken.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["zeroshot", "coop", "cocoop", "vpt", "ivlp", "maple", "mudpt", "mudpt_released",
           "dcp", "dcp_released"]
SHOTS = ["1", "2", "4", "8", "16"]
SEEDS = ["1", "2", "3"]


def run(args, log, threads: int = 0) -> None:
    cmd = [sys.executable, *args]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def runs(method: str, data: str, out: Path, threads: int) -> float:
    """Every run of one method (finished ones are skipped by run.py); its log in <out>/logs/."""
    start = time.time()
    base = ["run.py", "--cfg", f"configs/miniworld/{method}.yaml", "--data", data, "--output",
            str(out), "--seed", *SEEDS]
    k = ["0"] if method == "zeroshot" else SHOTS
    k16 = ["0" if method == "zeroshot" else "16"]
    (out / "logs").mkdir(exist_ok=True)
    with open(out / "logs" / f"{method}.log", "a", encoding="utf-8") as log:
        run(base + ["--dataset", "miniworld_shapes_sketch", "--shots", *k], log, threads)
        run(base + ["--dataset", "miniworld_objects", "--protocol", "base2novel", "--shots", *k16],
            log, threads)
        run(base + ["--dataset", "miniworld_shapes", "--protocol", "domain_generalization",
                    "eval.datasets=[miniworld_shapes_sketch]", "--shots", *k16], log, threads)
    return time.time() - start


def table(summary: Path, methods, seconds: float, jobs: int) -> str:
    """methods x (K shots, base, novel, HM, photo -> sketch) from run.py aggregate's CSV."""
    cell = {}
    with open(summary, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            std = f" ± {float(r['std']):.1f}" if r["std"] else ""
            value = f"{float(r['mean']):.1f}{std}"
            if r["protocol"] == "fewshot":
                cell[(r["method"], f"K={r['shots']}")] = value
            elif r["protocol"] == "base2novel":
                cell[(r["method"], r["metric"])] = value
            elif r["dataset"] == "miniworld_shapes_sketch":
                cell[(r["method"], "sketch")] = value
    cols = [f"K={k}" for k in SHOTS] + ["base", "novel", "hm", "sketch"]
    heads = [f"{k} shots" for k in SHOTS] + ["base", "novel", "HM", "photo → sketch"]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for m in methods:
        row = [cell.get((m, "K=0"), "-") if m == "zeroshot" and c.startswith("K=") else
               cell.get((m, c), "-") for c in cols]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return ("\n".join(lines) + f"\n\nAccuracy (%), mean ± std over seeds {', '.join(SEEDS)}; "
            f"{len(methods)} methods in {seconds / 60:.1f} min on {os.cpu_count()} CPU cores "
            f"({jobs} runs at a time).\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/miniworld_table")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="methods run at once, one CPU thread each (default: the number of cores)")
    args = p.parse_args()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str(out / "data")
    start = time.time()
    with open(out / "bench.log", "a", encoding="utf-8") as log:
        run(["-m", "dcp.miniworld", "make-data", "--root", data], log)
    threads = 1 if args.jobs > 1 else 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for m, seconds in zip(args.methods, pool.map(lambda m: runs(m, data, out, threads), args.methods)):
            print(f"{m}: {seconds:.0f} s", flush=True)
    with open(out / "bench.log", "a", encoding="utf-8") as log:
        run(["run.py", "aggregate", str(out)], log)
    text = table(out / "summary.csv", args.methods, time.time() - start, args.jobs)
    (out / "table.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
