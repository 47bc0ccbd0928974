"""The protocols through run.py: base-to-novel, cross-dataset and domain generalisation (the
ImageNet family in its real layout, with the 200-class remapping of ImageNet-A/-R)."""
from __future__ import annotations

import pytest

import datafixtures as DF
import runfixtures as R
from dcp.protocols import harmonic_mean

FOUR = ("red_thing", "green_thing", "blue_thing", "yellow_thing")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return R.save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip.pt")


def test_base_to_novel(run, clip, tmp_path, caplog):
    data = R.make_folder_dataset(tmp_path / "four", FOUR)
    out = tmp_path / "out"
    assert run.main(R.argv("dcp", clip, data, out, "--protocol", "base2novel")) == 0
    m = R.metrics(R.run_dir(out, "dcp", dataset="four", protocol="base2novel"))
    base, novel = m["results"]["base"], m["results"]["novel"]
    # labels sorted: blue, green (base: the first ceil(4/2)), red, yellow (novel)
    assert base["classnames"] == ["blue_thing", "green_thing"] and base["subsample"] == "base"
    assert novel["classnames"] == ["red_thing", "yellow_thing"] and novel["subsample"] == "new"
    assert base["num_images"] == novel["num_images"] == 6
    assert m["summary"]["hm"] == pytest.approx(harmonic_mean(base["accuracy"], novel["accuracy"]))
    assert m["setting"]["subsample"] == "base"
    assert m["train"]["fewshot"]["shots"] == 2
    # only base classes were trained on: the recorded draw holds base images only
    draw = (R.run_dir(out, "dcp", dataset="four", protocol="base2novel") / "fewshot.json").read_text()
    assert "red_thing" not in draw and "blue_thing" in draw

    # per-class context cannot serve novel classes: refused before anything is trained
    caplog.clear()
    assert run.main(R.argv("coop", clip, data, out, "--protocol", "base2novel",
                           "method.class_specific=true")) == 2
    assert "per-class tensors (ctx)" in caplog.text
    assert not (out / "base2novel" / "four" / "coop").exists()


def test_cross_dataset(run, clip, tmp_path):
    DF.make_split_dataset(tmp_path / "data", "caltech101")
    DF.make_split_dataset(tmp_path / "data", "dtd")
    out = tmp_path / "out"
    assert run.main(R.argv("maple", clip, tmp_path / "data", out, "--dataset", "caltech101",
                           "--protocol", "cross_dataset", "eval.datasets=[dtd]")) == 0
    m = R.metrics(R.run_dir(out, "maple", dataset="caltech101", protocol="cross_dataset"))
    assert list(m["results"]) == ["caltech101", "dtd"]
    assert m["results"]["dtd"]["num_classes"] == 3 and m["results"]["dtd"]["num_images"] == 9
    assert m["summary"]["targets"] == {"dtd": m["results"]["dtd"]["accuracy"]}
    assert m["summary"]["average"] == m["results"]["dtd"]["accuracy"]
    assert m["results"]["dtd"]["split"]["file"].endswith("split_zhou_DescribableTextures.json")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("inet")
    DF.make_imagenet_family(root)
    return root


def test_domain_generalisation_zero_shot(run, clip, imagenet, tmp_path):
    """The design card's command shape: --data is ImageNet's own folder, recognised."""
    out = tmp_path / "out"
    assert run.main(R.argv("zeroshot", clip, imagenet / "imagenet", out, "--protocol",
                           "domain_generalization", "eval.batch_size=250")) == 0
    m = R.metrics(R.run_dir(out, "zeroshot", dataset="imagenet", protocol="domain_generalization"))
    res = m["results"]
    assert list(res) == ["imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert [res[k]["num_classes"] for k in res] == [1000, 1000, 1000, 200, 200]
    assert [res[k]["num_images"] for k in res] == [1000, 1000, 1000, 200, 200]
    # the 200-class sets are prompted with their own (ImageNet) class names
    assert res["imagenet_a"]["classnames"] == [DF.NAMES[i] for i in DF.A_IDX]
    assert res["imagenet_r"]["classnames"] == [DF.NAMES[i] for i in DF.R_IDX]
    targets = [res[k]["accuracy"] for k in list(res)[1:]]
    assert m["summary"]["average"] == pytest.approx(sum(targets) / 4)


def test_domain_generalisation_slices_class_specific_context(run, clip, imagenet, tmp_path, caplog):
    out = tmp_path / "out"
    assert run.main(R.argv("coop", clip, imagenet, out, "--dataset", "imagenet", "--protocol",
                           "domain_generalization", "eval.datasets=[imagenet_a]",
                           "method.class_specific=true", "optim.batch_size=100",
                           "optim.epochs=1", "eval.batch_size=250", shots=1)) == 0
    m = R.metrics(R.run_dir(out, "coop", dataset="imagenet", protocol="domain_generalization",
                            shots=1))
    assert m["results"]["imagenet_a"]["num_classes"] == 200
    assert "per-class tensors ctx sliced to its 200 classes" in caplog.text


PLUGIN_PROTOCOL = '''
import dataclasses
from dcp.protocols import Protocol
from dcp.registry import PROTOCOLS


@PROTOCOLS.register("fewshot_val")
class FewShotOnVal(Protocol):
    """Few-shot training, evaluated on the validation split (a model-selection protocol)."""
    title = "Few-shot, validation split"

    def eval_sets(self, label, source, train, targets, read):
        return [("val", dataclasses.replace(train, test=source.val))]

    def summary(self, label, results):
        return {"val_accuracy": results["val"]["accuracy"]}
'''


def test_a_protocol_is_one_registered_class_in_a_plugin(run, clip, tmp_path, monkeypatch):
    """Adding a protocol edits nothing in dcp/: one registered class (here in a --plugin file)
    is accepted by the config, run, recorded and tabulated under its own title."""
    from dcp.protocols import aggregate
    from dcp.registry import PROTOCOLS
    monkeypatch.setattr(PROTOCOLS, "_items", dict(PROTOCOLS._items))     # forgotten afterwards
    plugin = tmp_path / "val_protocol.py"
    plugin.write_text(PLUGIN_PROTOCOL)
    data = R.make_folder_dataset(tmp_path / "four", FOUR)
    out = tmp_path / "out"
    assert run.main(R.argv("coop", clip, data, out, "--protocol", "fewshot_val",
                           "--plugin", str(plugin))) == 0
    m = R.metrics(R.run_dir(out, "coop", dataset="four", protocol="fewshot_val"))
    assert list(m["results"]) == ["val"] and m["setting"]["protocol"] == "fewshot_val"
    assert m["results"]["val"]["num_images"] == len(FOUR)                 # one val image a class
    assert m["summary"] == {"val_accuracy": m["results"]["val"]["accuracy"]}
    md, _ = aggregate(out)
    assert "## Few-shot, validation split" in md
