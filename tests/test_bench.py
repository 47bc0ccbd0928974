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
