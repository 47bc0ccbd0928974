"""The benchmark script runs end to end (`--quick`: tiny dimensions, about half a minute)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--out", str(out),
                           "--methods", "coop", "maple", "dcp", "--off-methods", "dcp"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["methods"]) == {"coop", "maple", "dcp"}
    assert res["methods"]["dcp"]["eval_1000"]["speedup_all"] > 1
    assert res["isolated"]["text_cut"]["tokens"] < 77
    assert "| dcp |" in proc.stdout


def test_readme_tables_come_from_the_committed_cpu_results():
    """The README's Speed section is `bench.py --report bench/results/cpu.json`: every method
    has its 100- and 1000-class training step, and the recorded run meets the targets."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--report",
                           str(ROOT / "bench" / "results" / "cpu.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = proc.stdout
    assert "all hold" in report
    res = json.loads((ROOT / "bench" / "results" / "cpu.json").read_text())
    assert res["elapsed_s"] <= 30 * 60
    for key, m in res["methods"].items():
        if key != "zeroshot":
            assert m["train_100"]["step_over_towers"] <= 1.3 and m["train_1000"]["step_s"] > 0, key
    readme = (ROOT / "README.md").read_text()
    for line in report.splitlines():           # every table row, the run line and the targets
        if line.strip() and "|---" not in line:
            assert line in readme, f"README Speed section is out of date: {line}"
