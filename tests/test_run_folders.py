"""Run folders (issue 14): every setting that changes results gets its own folder and is never
averaged with another by `aggregate`; a corrupt test image fails before training, naming the
file; Ctrl-C exits 130 with the command that continues the run."""
from __future__ import annotations

import csv
import io
import json
import shlex
import shutil

import pytest

import runfixtures as R
from dcp.config import load_config
from dcp.experiment import resolve
from dcp.rundir import RunFolder, method_tag, run_folder, setting_hash


def coop(clip, data, out, *extra, seeds=("1",)):
    args = R.argv("coop", clip, data, out, *extra, shots=1)
    at = args.index("--seed") + 1
    args[at:at + 1] = list(seeds)
    return args


def settings_of(out):
    return sorted((out / "fewshot" / "data").glob("coop-????????"))


@pytest.fixture(scope="module")
def three_settings(run, tiny, tmp_path_factory):
    """CoOp (1 shot) under one output root: 1 epoch (seeds 1, 2), 2 epochs, 1 epoch at lr 0.004.
    Shared: copy before changing anything."""
    out = tmp_path_factory.mktemp("settings")
    folders = []
    for extra, seeds in ((["optim.epochs=1"], ("1", "2")), (["optim.epochs=2"], ("1",)),
                         (["optim.epochs=1", "optim.lr=0.004"], ("1",))):
        before = set(settings_of(out))
        assert run.main(coop(*tiny, out, *extra, seeds=seeds)) == 0
        new = set(settings_of(out)) - before
        assert len(new) == 1, f"{extra} did not get a folder of its own"
        folders.append(new.pop())
    return out, folders


# --------------------------------------------------------------------------- one folder per setting
def test_changed_lr_or_epochs_trains_in_a_new_folder(run, tiny, three_settings, caplog):
    out, (one, two, faster) = three_settings
    for folder, epochs, lr in ((one, 1, 0.002), (two, 2, 0.002), (faster, 1, 0.004)):
        m = R.metrics(folder / "shots1" / "seed1")
        assert folder.name == f"coop-{m['setting']['setting_hash']}"
        assert m["setting"]["epochs"] == epochs and len(m["train"]["history"]) == epochs
        assert load_config(folder / "shots1" / "seed1" / "config.yaml").optim.lr == lr
    assert (one / "shots1" / "seed2" / "metrics.json").is_file()       # seeds share a setting
    # the same setting again is found finished, not retrained
    caplog.clear()
    assert run.main(coop(*tiny, out, "optim.epochs=1", "optim.lr=0.004")) == 0
    assert "nothing to do" in caplog.text and len(settings_of(out)) == 3


def _resolved(tiny, config, *overrides, shots=2, seed=1):
    clip, data = tiny
    name = {"maple_xd_vitb16": "maple"}.get(config, config.split("_")[0])
    cfg = load_config(R.CONFIGS / f"{config}.yaml",
                      [*R.COMMON, *R.METHODS[name][1], *overrides, f"data.root={data}",
                       "data.dataset=folder", f"clip={clip}", "output=/runs"])
    return resolve(cfg, shots, seed)


def test_setting_hash_covers_what_changes_results(tiny):
    base = _resolved(tiny, "coop_vitb16")
    h = setting_hash(base)
    for changed in (["optim.lr=0.004"], ["optim.epochs=3"], ["optim.batch_size=1"],
                    ["method.n_ctx=2"], ["data.crop_scale=[0.5, 1.0]"], ["precision=fp32"]):
        assert setting_hash(_resolved(tiny, "coop_vitb16", *changed)) != h, changed
    # what cannot change results shares the setting; seed and shots are in the path
    for same in (["data.num_workers=3"], ["eval.speedups=false"], ["eval.batch_size=7"],
                 ["output=/elsewhere"]):
        assert setting_hash(_resolved(tiny, "coop_vitb16", *same)) == h, same
    other = _resolved(tiny, "coop_vitb16", shots=4, seed=3)
    assert setting_hash(other) == h
    assert run_folder(other).parent.parent == run_folder(base).parent.parent
    assert run_folder(other).parts[-2:] == ("shots4", "seed3")


def test_maple_presets_land_in_different_folders(tiny):
    maple, xd = _resolved(tiny, "maple_vitb16"), _resolved(tiny, "maple_xd_vitb16")
    assert method_tag(maple) == method_tag(xd) == "maple"
    assert maple.optim.lr != xd.optim.lr
    assert run_folder(maple) != run_folder(xd)
    assert run_folder(maple).parent.parent.name == f"maple-{setting_hash(maple)}"


def test_a_plugin_fusion_is_named_in_the_folder(tiny):
    from dcp.registry import load_plugins
    load_plugins()
    plain = _resolved(tiny, "ivlp_vitb16")
    own = _resolved(tiny, "ivlp_vitb16", "method.fusion=none")     # its own fusion, spelt out
    gated = _resolved(tiny, "ivlp_vitb16", "method.fusion=gated_coupling")
    assert method_tag(plain) == method_tag(own) == "ivlp"
    assert run_folder(own) == run_folder(plain)
    assert method_tag(gated) == "ivlp+gated_coupling"
    setting = run_folder(gated).parent.parent
    assert setting.name == f"ivlp+gated_coupling-{setting_hash(gated)}"
    assert setting != run_folder(plain).parent.parent


# --------------------------------------------------------------------------- aggregate
def test_aggregate_shows_settings_of_one_method_apart(run, three_settings, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(three_settings[0], out)
    one, two, faster = (out / "fewshot" / "data" / f.name for f in three_settings[1])
    # distinct accuracies, so that any averaging across settings would show
    accuracy = {one / "shots1" / "seed1": 20.0, one / "shots1" / "seed2": 30.0,
                two / "shots1" / "seed1": 90.0, faster / "shots1" / "seed1": 60.0}
    for folder, acc in accuracy.items():
        doc = R.metrics(folder)
        doc.pop("format")
        doc["results"]["data"]["accuracy"] = acc
        RunFolder(folder).write_metrics(doc)
    capsys.readouterr()
    assert run.main(["aggregate", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert len(rows) == 3
    got = {r["setting"]: (r["method"], float(r["mean"]), float(r["std"]), int(r["seeds"])) for r in rows}
    h1, h2, h3 = (f.name.split("-")[1] for f in (one, two, faster))
    assert got == {h1: (f"coop [{h1}]", 25.0, 5.0, 2), h2: (f"coop [{h2}]", 90.0, 0.0, 1),
                   h3: (f"coop [{h3}]", 60.0, 0.0, 1)}
    md = (out / "summary.md").read_text()
    assert md in printed
    for h, cell in ((h1, "25.00 ± 5.00 | 2"), (h2, "90.00 ± 0.00 | 1"), (h3, "60.00 ± 0.00 | 1")):
        assert f"| data | coop [{h}] | 1 | {cell} |" in md
    assert "Several settings of one method are shown apart" in md


# --------------------------------------------------------------------------- failures
def test_a_corrupt_test_image_fails_before_training(run, tiny, tmp_path, monkeypatch, caplog, capsys):
    import dcp.experiment
    clip, _ = tiny
    data = R.make_folder_dataset(tmp_path / "data")
    bad = data / "test" / "green_thing" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)           # a PNG signature, no image

    def no_training(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(dcp.experiment, "fit", no_training)
    caplog.clear()
    code = run.main(coop(clip, data, tmp_path / "out", "data.num_workers=1"))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1, caplog.text
    assert str(bad) in errors[0] and "not a readable image" in errors[0]
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130_with_the_command_that_continues(run, tiny, three_settings, tmp_path,
                                                          monkeypatch, caplog):
    import dcp.engine
    clip, data = tiny
    real, calls = dcp.engine._train_epoch, []

    def interrupted_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dcp.engine, "_train_epoch", interrupted_epoch)
    args = coop(clip, data, tmp_path / "out", "optim.epochs=2", "--force")
    caplog.clear()
    assert run.main(args) == 130
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--resume" in errors[0], caplog.text
    folder = R.run_dir(tmp_path / "out", "coop", shots=1)
    assert (folder / "last.pt").is_file() and not (folder / "metrics.json").exists()
    assert "run ended: KeyboardInterrupt" in (folder / "log.txt").read_text()

    monkeypatch.undo()
    again = shlex.split(errors[0].split("Continue with: python run.py ", 1)[1])
    assert "--resume" in again and "--force" not in again
    assert run.main(again) == 0
    reference = three_settings[1][1] / "shots1" / "seed1"          # the same run, uninterrupted
    done = R.metrics(folder)
    assert done["results"] == R.metrics(reference)["results"]
    assert done["train"]["history"] == R.metrics(reference)["train"]["history"]
    assert json.loads((folder / "fewshot.json").read_text())["train"] == \
        json.loads((reference / "fewshot.json").read_text())["train"]
