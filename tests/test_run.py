"""run.py end to end on a tiny CLIP (OpenAI state-dict file, read by dcp.clip.load) and a tiny
`folder` dataset, for every method; and bad input failing with one clear line, no traceback."""
from __future__ import annotations

import json

import pytest
import torch

import runfixtures as R
from dcp.clip import build_model
from dcp.config import load_config
from dcp.methods import build_method
from dcp.utils import atomic_torch_save, sha256_file


def test_training_crop_scale_reaches_the_training_transform(run, tiny, tmp_path, monkeypatch):
    import dcp.engine
    seen = []
    real = dcp.engine.build_transform

    def spy(train, size=224, crop_scale=(0.08, 1.0)):
        seen.append((train, tuple(crop_scale)))
        return real(train, size, crop_scale)

    monkeypatch.setattr(dcp.engine, "build_transform", spy)
    clip, data = tiny
    assert run.main(R.argv("coop", clip, data, tmp_path, "data.crop_scale=[0.5, 0.9]")) == 0
    assert (True, (0.5, 0.9)) in seen and all(scale == (0.5, 0.9) for train, scale in seen if train)


@pytest.mark.parametrize("method", list(R.METHODS))
def test_every_method_trains_and_evaluates(method, run, tiny, tmp_path):
    clip, data = tiny
    assert run.main(R.argv(method, clip, data, tmp_path)) == 0
    folder = R.run_dir(tmp_path, method)
    m = R.metrics(folder)
    s = m["setting"]
    assert (s["protocol"], s["dataset"], s["dataset_name"], s["tag"], s["shots"], s["seed"]) == \
        ("fewshot", "data", "folder", method, 2, 1)
    res = m["results"]["data"]
    assert res["num_images"] == 9 and res["num_classes"] == 3
    assert res["classnames"] == ["blue_thing", "green_thing", "red_thing"]     # sorted folders
    # accuracy is the per-class accuracies weighted by the 3 test images of each class
    assert res["accuracy"] == pytest.approx(sum(res["per_class_accuracy"]) / 3)
    assert all(round(a * 3 / 100) * 100 / 3 == pytest.approx(a) for a in res["per_class_accuracy"])
    assert 0 <= res["macro_f1"] <= 100 and m["summary"]["accuracy"] == res["accuracy"]
    assert (folder / "log.txt").is_file() and (folder / "config.yaml").is_file()
    saved = load_config(folder / "config.yaml")
    assert saved.method.name == method.split("_")[0] and saved.data.shots == 2

    if method == "zeroshot":
        assert not (folder / "final.pt").exists() and m["train"]["history"] == []
        return
    # the LR of epoch 0 is the warm-up 1e-5, epoch 1 the configured lr (cosine at step 0)
    lr = saved.optim.lr
    assert [h["lr"] for h in m["train"]["history"]] == [1e-5, pytest.approx(lr)]
    assert "epoch 2/2" in (folder / "log.txt").read_text()
    # the checkpoint holds exactly the trained tensors (no frozen CLIP), and training moved them
    trained = R.weights(folder)
    torch.manual_seed(1)                   # the run seeds its model initialisation like this
    fresh = build_method(saved.method, build_model(torch.load(clip, weights_only=True)),
                         ["blue_thing", "green_thing", "red_thing"])
    init = fresh.trainable_state_dict()
    assert set(trained) == set(init) and not any(k.startswith("clip.") for k in trained)
    assert m["train"]["trainable_parameters"] == fresh.num_trainable() > 0
    changed = [k for k in init if not torch.equal(init[k], trained[k])]
    assert changed, "training changed no tensor"
    assert not (folder / "last.pt").exists()          # removed once final.pt is written


def test_several_seeds_and_shots_in_one_call(run, tiny, tmp_path):
    clip, data = tiny
    args = R.argv("coop", clip, data, tmp_path)
    args[args.index("--seed") + 1:args.index("--seed") + 2] = ["1", "2"]
    args[args.index("--shots") + 1:args.index("--shots") + 2] = ["1", "2"]
    assert run.main(args) == 0
    for shots in (1, 2):
        for seed in (1, 2):
            m = R.metrics(R.run_dir(tmp_path, "coop", shots=shots, seed=seed))
            assert (m["setting"]["shots"], m["setting"]["seed"]) == (shots, seed)
            draw = m["train"]["fewshot"]
            assert (draw["shots"], draw["seed"], draw["mode"]) == (shots, seed, "per_class")
            folder = R.run_dir(tmp_path, "coop", shots=shots, seed=seed)
            assert json.loads((folder / "fewshot.json").read_text())["mode"] == "per_class"
    # CoOp's config ties the epochs to the shots; the tests override it with 2 epochs
    cfg = load_config(R.CONFIGS / "coop_vitb16.yaml")
    assert [cfg.optim.epochs_for(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert R.metrics(R.run_dir(tmp_path, "coop", shots=1))["setting"]["epochs"] == 2


def _error(run, args, caplog, capsys):
    return R.run_error(run, args, caplog, capsys, short=False)


def test_bad_input_fails_with_one_clear_line(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    base = R.argv("coop", clip, data, tmp_path)

    def args(*extra, drop=()):
        out = list(base)
        for flag in drop:
            i = out.index(flag)
            del out[i:i + 2]
        return out + list(extra)

    msg = _error(run, args("--data", str(tmp_path / "nowhere")), caplog, capsys)
    assert "nowhere" in msg and "not found" in msg
    msg = _error(run, args("method.name=nope"), caplog, capsys)
    assert "unknown method 'nope'" in msg and "coop" in msg
    msg = _error(run, args("optim.lrr=0.1"), caplog, capsys)
    assert "optim.lrr" in msg and "lr" in msg
    msg = _error(run, args("optim.lr=fast"), caplog, capsys)
    assert "optim.lr" in msg and "number" in msg
    msg = _error(run, args("--protocol", "sideways"), caplog, capsys)
    assert "protocol" in msg and "base2novel" in msg
    msg = _error(run, args("--eval-only", "--model-dir", str(tmp_path / "no_run")), caplog, capsys)
    assert str(tmp_path / "no_run") in msg and "final.pt" in msg
    msg = _error(run, args("--clip", str(tmp_path / "missing.pt")), caplog, capsys)
    assert "missing.pt" in msg
    msg = _error(run, args("--dataset", "imagenet"), caplog, capsys)
    assert "imagenet" in msg
    msg = _error(run, args(drop=["--cfg"]), caplog, capsys)
    assert "--cfg" in msg
    msg = _error(run, ["--cfg", str(R.CONFIGS / "vpt_vitb16.yaml"), "--clip", str(clip),
                       "--data", str(data), "--output", str(tmp_path)], caplog, capsys)
    assert "=12" in msg and "2 blocks" in msg
    msg = _error(run, args("--plugin", str(tmp_path / "plug.py")), caplog, capsys)
    assert "plug.py" in msg
    msg = _error(run, args("--load-released", str(tmp_path / "released")), caplog, capsys)
    assert "released" in msg
    # one line each, naming the file, the key or the option
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: [0.1\n")
    msg = R.run_error(run, args("--cfg", str(tmp_path / "bad.yaml")), caplog, capsys)
    assert "bad.yaml: not valid YAML at line" in msg
    msg = R.run_error(run, args("--cfg", str(tmp_path)), caplog, capsys)
    assert "is a folder, not a config file" in msg
    (tmp_path / "broken_plugin.py").write_text("def oops(:\n")
    msg = R.run_error(run, args("--plugin", str(tmp_path / "broken_plugin.py")), caplog, capsys)
    assert "broken_plugin.py fails to import: SyntaxError" in msg
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('no GPU here')\n")
    msg = R.run_error(run, args("--plugin", str(tmp_path / "raising_plugin.py")), caplog, capsys)
    assert "raising_plugin.py fails to import: RuntimeError: no GPU here" in msg
    msg = R.run_error(run, args("--shots", "-3"), caplog, capsys)
    assert "data.shots=-3" in msg
    assert run.main(args("--stop-after", "-1")) == 2 and "must be >= 0" in capsys.readouterr().err
    assert not any(tmp_path.rglob("metrics.json"))


def test_dataset_recognised_and_image_size_override(run, tiny, tmp_path):
    """No --dataset: a folder of class folders is recognised; data.image_size overrides the
    checkpoint's 32 px (the ViT's position grid is resized)."""
    clip, data = tiny
    assert run.main(R.argv("zeroshot", clip, data, tmp_path, "data.image_size=48")) == 0
    m = R.metrics(R.run_dir(tmp_path, "zeroshot"))
    assert m["setting"]["dataset_name"] == "folder" and m["setting"]["image_size"] == 48


def test_undecodable_test_image_skipped_when_asked(run, tiny, tmp_path, caplog):
    clip, _ = tiny
    data = R.make_folder_dataset(tmp_path / "data")
    (data / "test" / "red_thing" / "broken.png").write_bytes(b"not an image")
    assert run.main(R.argv("zeroshot", clip, data, tmp_path / "fail")) == 2
    assert "broken.png" in caplog.text
    assert run.main(R.argv("zeroshot", clip, data, tmp_path / "skip", "data.on_bad_image=skip")) == 0
    res = R.metrics(R.run_dir(tmp_path / "skip", "zeroshot"))["results"]["data"]
    assert (res["num_images"], res["num_skipped"]) == (9, 1)


def test_load_released_checkpoint(run, tiny, tmp_path):
    """--load-released reads a Dassl checkpoint of the authors' code (here CoOp's layout, fp16)
    and evaluates exactly what our own checkpoint with the same tensors gives."""
    clip, data = tiny
    trained = tmp_path / "trained"
    assert run.main(R.argv("coop", clip, data, trained)) == 0
    folder = R.run_dir(trained, "coop")
    ck = torch.load(folder / "final.pt", weights_only=True)
    ctx = ck["state_dict"]["ctx"].half()                       # as the released code stores it
    dassl = tmp_path / "released" / "prompt_learner" / "model.pth.tar-2"
    dassl.parent.mkdir(parents=True)
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(3, 1, 64),
                               "token_suffix": torch.zeros(3, 72, 64)}, "epoch": 2}, dassl)
    ck["state_dict"]["ctx"] = ctx.float()
    atomic_torch_save(ck, folder / "final.pt")        # rewritten as dcp writes it (with its SHA)

    a, b = tmp_path / "a", tmp_path / "b"
    assert run.main(R.argv("coop", clip, data, a, "--eval-only", "--load-released",
                           str(tmp_path / "released"))) == 0
    assert run.main(R.argv("coop", clip, data, b, "--eval-only", "--model-dir", str(folder))) == 0
    ma, mb = R.metrics(R.run_dir(a, "coop+released")), R.metrics(R.run_dir(b, "coop+eval"))
    assert ma["released_checkpoint"] == str(tmp_path / "released")
    assert ma["results"] == mb["results"]
    # tensors from elsewhere are recorded in folders of their own, marked, never a trained run's
    assert ma["setting"]["origin"] == "released:sha256:" + sha256_file(dassl)
    assert mb["setting"]["origin"] == "eval:sha256:" + sha256_file(folder / "final.pt")
    assert not R.run_dir(a, "coop").exists() and not R.run_dir(b, "coop").exists()
    assert run.main(R.argv("coop", clip, data, trained, "--eval-only", "--load-released",
                           str(tmp_path / "released"))) == 0
    assert R.metrics(folder)["eval_only"] is False                # the trained run is untouched
    assert R.metrics(R.run_dir(trained, "coop+released"))["results"] == ma["results"]
    init = tmp_path / "init"                                  # trained from the released ctx
    assert run.main(R.argv("coop", clip, data, init, "--load-released", str(tmp_path / "released"))) == 0
    assert R.metrics(R.run_dir(init, "coop+init_released"))["eval_only"] is False

    # a released checkpoint that does not fit (3 context vectors, the config has 4) fails
    # before any run folder is made
    bad = tmp_path / "bad" / "prompt_learner" / "model.pth.tar-2"
    bad.parent.mkdir(parents=True)
    torch.save({"state_dict": {"ctx": ctx[:3], "token_prefix": torch.zeros(3, 1, 64),
                               "token_suffix": torch.zeros(3, 72, 64)}, "epoch": 2}, bad)
    c = tmp_path / "c"
    assert run.main(R.argv("coop", clip, data, c, "--load-released", str(tmp_path / "bad"))) == 2
    assert not c.exists()
