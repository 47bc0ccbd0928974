"""The README's first command, `python run.py demo`, as a real process: offline, with the
shipped mini-world CLIP on a generated mini-world task, zero-shot first and then DCP few-shot,
both recorded as ordinary run folders, and DCP better than zero-shot."""
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
    cmd = [sys.executable, str(R.ROOT / "run.py"), "demo", "--output", str(tmp_path / "demo")]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    phases = [line for line in p.stderr.splitlines() if "demo " in line and "/4 (" in line]
    assert [line.split("demo ")[1][:3] for line in phases] == ["1/4", "2/4", "3/4", "4/4"]
    assert p.stderr.count("loading CLIP") == 1                      # CLIP and data once
    result = p.stdout.strip().splitlines()
    assert len(result) == 2 and result[0].startswith("zero-shot CLIP:") and "DCP" in result[1]
    out = tmp_path / "demo"
    zs = R.metrics(R.run_dir(out, "zeroshot", task, shots=0, seed=cfg.seed))
    dcp = R.metrics(R.run_dir(out, "dcp", task, shots=shots, seed=cfg.seed))
    assert zs["setting"]["clip"] == "miniworld" and dcp["setting"]["clip"] == zs["setting"]["clip"]
    assert dcp["setting"]["dataset_name"] == task
    assert len(dcp["train"]["history"]) == cfg.optim.epochs_for(shots)
    assert dcp["summary"]["accuracy"] > zs["summary"]["accuracy"] + 5, (dcp["summary"], zs["summary"])
    assert f"{zs['summary']['accuracy']:6.2f}%" in result[0]
    assert f"{dcp['summary']['accuracy']:6.2f}%" in result[1]
    assert (out / "data" / task / f"split_{task}.json").is_file()   # generated
    assert not (tmp_path / "no-cache").exists()                      # nothing downloaded

    # a second call finds both finished runs and reports the same result; exit code 0
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "finished run" in p.stderr
    assert p.stdout.strip().splitlines() == result
