"""Interrupted-then-resumed equals uninterrupted (bit-exact on CPU); eval-only reproduces the
training run's metrics; a finished folder is not retrained; --force retrains identically."""
from __future__ import annotations

import pytest
import torch

import runfixtures as R


# DCP `paper` has a running-mean buffer, i.e. state beyond the parameters and the optimiser.
EPOCHS = ["optim.epochs=3"]


@pytest.fixture(scope="module")
def uninterrupted(run, tiny, tmp_path_factory):
    clip, data = tiny
    out = tmp_path_factory.mktemp("whole")
    assert run.main(R.argv("dcp", clip, data, out, *EPOCHS)) == 0
    return out, R.run_dir(out, "dcp")


def _same_weights(a, b):
    wa, wb = R.weights(a), R.weights(b)
    assert set(wa) == set(wb) and "fusion.running_v" in wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_after_a_kill_equals_the_uninterrupted_run(run, tiny, uninterrupted, tmp_path, caplog):
    clip, data = tiny
    args = R.argv("dcp", clip, data, tmp_path, *EPOCHS)
    assert run.main(args + ["--stop-after", "1"]) == 3            # killed after epoch 1
    folder = R.run_dir(tmp_path, "dcp")
    assert (folder / "last.pt").is_file() and not (folder / "metrics.json").exists()
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1
    group = torch.load(folder / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == \
        (0.9, 5e-4, 0, False)                                      # SGD as Dassl builds it

    caplog.clear()
    assert run.main(args) == 2                                     # not silently restarted
    assert "--resume" in caplog.text

    # resumed with a loader worker: augmentation depends on (seed, epoch, image), not workers
    assert run.main(args + ["--resume", "--stop-after", "2", "data.num_workers=1"]) == 3
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 2
    assert run.main(args + ["--resume"]) == 0
    assert not (folder / "last.pt").exists()

    _same_weights(folder, uninterrupted[1])
    done, whole = R.metrics(folder), R.metrics(uninterrupted[1])
    assert done["results"] == whole["results"]
    assert done["train"]["history"] == whole["train"]["history"]
    assert [h["epoch"] for h in done["train"]["history"]] == [1, 2, 3]
    log = (folder / "log.txt").read_text()
    assert "resuming from" in log and "1 of 3 epochs done" in log and "2 of 3 epochs done" in log


def test_a_finished_run_is_not_retrained(run, tiny, uninterrupted, caplog):
    clip, data = tiny
    out, folder = uninterrupted
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    caplog.clear()
    assert run.main(R.argv("dcp", clip, data, out, *EPOCHS)) == 0
    assert "finished run" in caplog.text and "--eval-only" in caplog.text and "--force" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_eval_only_reproduces_the_training_metrics(run, tiny, uninterrupted, tmp_path):
    clip, data = tiny
    _, folder = uninterrupted
    # the run's own config.yaml (no --cfg), results into another output root
    assert run.main(["--eval-only", "--model-dir", str(folder), "--output", str(tmp_path)]) == 0
    again = R.metrics(R.run_dir(tmp_path, "dcp+eval"))
    assert again["eval_only"] is True and again["weights"] == str(folder / "final.pt")
    assert again["train"]["fewshot"] == R.metrics(folder)["train"]["fewshot"] is not None
    assert again["results"] == R.metrics(folder)["results"]
    # without the speed-ups (77-token text, everything recomputed per batch): same predictions
    out2 = tmp_path / "slow"
    assert run.main(["--eval-only", "--model-dir", str(folder), "--output", str(out2),
                     "eval.speedups=false"]) == 0
    slow = R.metrics(R.run_dir(out2, "dcp+eval"))["results"]["data"]
    assert slow["per_class_accuracy"] == R.metrics(folder)["results"]["data"]["per_class_accuracy"]


def test_force_retrains_to_the_same_result(run, tiny, uninterrupted, tmp_path):
    clip, data = tiny
    args = R.argv("dcp", clip, data, tmp_path, *EPOCHS)
    assert run.main(args) == 0
    first = R.weights(R.run_dir(tmp_path, "dcp"))
    assert run.main(args + ["--force"]) == 0
    _same_weights(R.run_dir(tmp_path, "dcp"), uninterrupted[1])
    assert all(torch.equal(first[k], v) for k, v in R.weights(R.run_dir(tmp_path, "dcp")).items())
