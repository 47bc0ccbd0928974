"""Time the offline demo as a new user meets it: `python run.py demo` in a fresh output folder
(so the mini-world task is generated, as on a first run), then once more (both runs found
finished). Prints the wall time of each phase the demo logs and the total against the 15 s
target, measured in this one run.

    python bench/demo.py            # prints the table; nothing is written outside a temp folder
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 15.0
PHASE = re.compile(r"demo (\d)/4 \((\d+\.\d)s\): (.*)")
DONE = re.compile(r"demo done in (\d+\.\d)s")


def timed_demo(output: Path):
    began = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "demo", "--output", str(output)],
                       capture_output=True, text=True, cwd=output.parent)
    wall = time.perf_counter() - began
    if p.returncode:
        sys.exit(f"the demo failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    phases = [(int(m[1]), float(m[2]), m[3][:60]) for m in PHASE.finditer(p.stderr)]
    done = DONE.search(p.stderr)
    phases.append((5, float(done[1]) if done else float("nan"), "done"))
    return wall, phases, p.stdout.strip()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        first, phases, result = timed_demo(out)
        second, _, _ = timed_demo(out)
    print("phase  starts at  what")
    for i, at, text in phases:
        print(f"{i}/4    {at:7.1f}s  {text}" if i <= 4 else f"end    {at:7.1f}s  {text}")
    print(result)
    print(f"first run {first:.1f}s (target {TARGET:.0f}s: {first / TARGET:.2f} of it); "
          f"second run {second:.1f}s (both runs found finished); the wall times include "
          f"interpreter start and imports ({first - phases[-1][1]:.1f}s of the first run)")


if __name__ == "__main__":
    main()
