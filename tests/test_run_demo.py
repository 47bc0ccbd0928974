"""The README's first command, `python run.py --cfg configs/demo.yaml`, as a real process: offline,
with the shipped mini-world CLIP on a generated mini-world task, zero-shot first and then DCP
few-shot, both recorded, and DCP better than zero-shot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import runfixtures as R
from dcp.config import load_config


def test_demo_runs_offline_zero_shot_then_dcp(tmp_path):
    cfg = load_config(R.CONFIGS / "demo.yaml")
    task, shots = cfg.data.dataset, cfg.data.shots
    env = {**os.environ, "DCP_CLIP_CACHE": str(tmp_path / "no-cache"), "PYTHONWARNINGS": "error::FutureWarning"}
    cmd = [sys.executable, str(R.ROOT / "run.py"), "--cfg", str(R.CONFIGS / "demo.yaml"),
           f"output={tmp_path / 'demo'}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "DEMO: mini world" in p.stderr and f"DEMO: {task}: zero-shot CLIP" in p.stderr
    out = tmp_path / "demo" / "fewshot" / task
    zs = json.loads((out / "zeroshot" / "shots0" / f"seed{cfg.seed}" / "metrics.json").read_text())
    dcp = json.loads((out / "dcp" / f"shots{shots}" / f"seed{cfg.seed}" / "metrics.json").read_text())
    assert zs["setting"]["clip"].endswith("miniworld-clip.pt") and dcp["setting"]["clip"] == zs["setting"]["clip"]
    assert "mini world" in dcp["demo"] and dcp["setting"]["dataset_name"] == task
    assert len(dcp["train"]["history"]) == cfg.optim.epochs_for(shots)
    assert dcp["summary"]["accuracy"] > zs["summary"]["accuracy"] + 5, (dcp["summary"], zs["summary"])
    assert (tmp_path / "demo" / "data" / task / f"split_{task}.json").is_file()   # generated
    assert not (tmp_path / "no-cache").exists()                                     # nothing downloaded

    # a second call finds both finished runs and says how to rerun them; exit code 0
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "finished run" in p.stderr and "--force" in p.stderr
