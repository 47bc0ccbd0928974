"""`torchrun --nproc_per_node 2 run.py ...` on CPU (gloo): the same global batches as one
process, so the same trained tensors (up to float reduction order) and metrics; every test
image evaluated once, in the single-process batches; only rank 0 writes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import runfixtures as R
from dcp.clip import build_model
from dcp.config import load_config
from dcp.methods import build_method

# `torchrun` is this module; calling it through the interpreter needs no script on PATH
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def torchrun(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(R.ROOT / "run.py"), *args]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def test_two_processes_train_like_one(tiny, tmp_path):
    clip, data = tiny
    extra = ["optim.batch_size=4", "optim.epochs=3", "eval.batch_size=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert R.load_run().main(R.argv("maple", clip, data, one, *extra, shots=3)) == 0
    torchrun(R.argv("maple", clip, data, two, *extra, shots=3), tmp_path)

    a, b = R.run_dir(one, "maple", shots=3), R.run_dir(two, "maple", shots=3)
    wa, wb = R.weights(a), R.weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    ma, mb = R.metrics(a), R.metrics(b)
    assert mb["results"] == ma["results"]
    for ha, hb in zip(ma["train"]["history"], mb["train"]["history"]):
        assert hb["lr"] == ha["lr"] and hb["accuracy"] == ha["accuracy"]    # of every process
        assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-5)
    assert sorted(p.relative_to(two) for p in two.rglob("metrics.json")) == \
        [b.relative_to(two) / "metrics.json"]
    assert len(list(two.rglob("log.txt"))) == 1 and len(list(two.rglob("*.pt"))) == 1


def test_two_processes_with_parameters_that_get_no_gradient(tiny, tmp_path):
    """DCP `released`: the text half of CMPA never gets a gradient; its batch-pooled
    evaluation still sees exactly the single-process test batches."""
    clip, data = tiny
    out = tmp_path / "two"
    p = torchrun(R.argv("dcp_released", clip, data, out, "optim.batch_size=2", "eval.batch_size=2",
                        shots=3), tmp_path)
    assert "left out of training" in p.stderr and "attn_t" in p.stderr
    folder = R.run_dir(out, "dcp_released", shots=3)
    # one process evaluating the same weights with the same test batches: same predictions
    ev = tmp_path / "ev"
    assert R.load_run().main(["--eval-only", "--model-dir", str(folder), "--output", str(ev)]) == 0
    assert R.metrics(R.run_dir(ev, "dcp_released+eval", shots=3))["results"] == R.metrics(folder)["results"]
    # the tensors that got no gradient kept their initialisation; the others were trained
    cfg = load_config(folder / "config.yaml")
    torch.manual_seed(1)
    init = build_method(cfg.method, build_model(torch.load(clip, weights_only=True)),
                        ["blue_thing", "green_thing", "red_thing"]).trainable_state_dict()
    w = R.weights(folder)
    text_half = [k for k in w if "_t." in k or k.startswith("fusion.blocks.0.v2t")]
    assert text_half and all(torch.equal(w[k], init[k]) for k in text_half)
    assert not torch.equal(w["vision_ctx"], init["vision_ctx"])
