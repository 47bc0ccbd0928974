"""The README's first command, `python run.py --cfg configs/demo.yaml`, as a real process:
offline, on the generated shapes dataset and the generated (untrained) tiny CLIP, and saying so."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import runfixtures as R


def test_demo_runs_offline_and_says_its_weights_are_untrained(tmp_path):
    env = {**os.environ, "DCP_CLIP_CACHE": str(tmp_path / "no-cache"), "PYTHONWARNINGS": "error::FutureWarning"}
    cmd = [sys.executable, str(R.ROOT / "run.py"), "--cfg", str(R.CONFIGS / "demo.yaml"),
           f"output={tmp_path / 'demo'}", "optim.epochs=2"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "random weights" in p.stderr and "DEMO" in p.stderr
    folder = tmp_path / "demo" / "fewshot" / "shapes" / "dcp" / "shots8" / "seed1"
    m = json.loads((folder / "metrics.json").read_text())
    assert "untrained" in m["demo"] and m["setting"]["dataset_name"] == "folder"
    assert m["results"]["shapes"]["num_images"] == 80 and m["results"]["shapes"]["num_classes"] == 4
    assert len(m["train"]["history"]) == 2
    assert (tmp_path / "demo" / "assets" / "tiny-clip-untrained.pt").is_file()
    assert not (tmp_path / "no-cache").exists()                  # nothing was downloaded
    assert "DEMO" in (folder / "log.txt").read_text()

    # a second call finds the finished run and says how to rerun it; exit code 0
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "finished run" in p.stderr and "--force" in p.stderr
