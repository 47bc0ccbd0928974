"""`run.py aggregate`: mean ± std over seeds, base/novel/HM and averages over datasets, checked
against hand-computed numbers on run folders written as the engine writes them."""
from __future__ import annotations

import csv
import hashlib
import io
import math

import pytest

import runfixtures as R
from dcp.protocols import aggregate, harmonic_mean
from dcp.rundir import RunFolder


def _run(root, protocol, dataset, tag, shots, seed, results, setting_hash=None):
    # as in real runs, the setting hash covers the dataset (and the shots do not change it)
    setting_hash = setting_hash or hashlib.sha256(f"{protocol}/{dataset}/{tag}".encode()).hexdigest()
    folder = root / protocol / dataset / f"{tag}-{setting_hash[:8]}" / f"shots{shots}" / f"seed{seed}"
    setting = {"protocol": protocol, "dataset": dataset, "tag": tag, "method": tag.split("_")[0],
               "shots": shots, "seed": seed, "setting_hash": setting_hash}
    folder.mkdir(parents=True)
    RunFolder(folder).write_metrics({
        "setting": setting, "summary": {},
        "results": {k: {"accuracy": v} for k, v in results.items()}})


@pytest.fixture
def runs(tmp_path):
    for seed, acc in zip((1, 2, 3), (60.0, 62.0, 64.0)):
        _run(tmp_path, "fewshot", "dtd", "coop", 16, seed, {"dtd": acc})
        _run(tmp_path, "fewshot", "eurosat", "coop", 16, seed, {"eurosat": 70.0})
    _run(tmp_path, "fewshot", "dtd", "coop", 1, 1, {"dtd": 40.0})
    for seed, (b, n) in zip((1, 2), ((80.0, 60.0), (82.0, 64.0))):
        _run(tmp_path, "base2novel", "dtd", "dcp", 16, seed, {"base": b, "novel": n})
    _run(tmp_path, "base2novel", "eurosat", "dcp", 16, 1, {"base": 90.0, "novel": 50.0})
    for seed, accs in zip((1, 2), ((70.0, 90.0, 40.0), (72.0, 92.0, 44.0))):
        _run(tmp_path, "cross_dataset", "imagenet", "maple", 16, seed,
             dict(zip(("imagenet", "caltech101", "dtd"), accs)))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    RunFolder(tmp_path / "incomplete").write_metrics({"results": {}})     # no setting
    _run(tmp_path, "plugin_protocol", "dtd", "coop", 16, 1, {"dtd": 10.0})   # not registered
    return tmp_path


def _rows(text):
    return {(r["protocol"], r["dataset"], r["method"], r["shots"], r["metric"]): r
            for r in csv.DictReader(io.StringIO(text))}


def test_aggregate_numbers(runs, caplog):
    md, text = aggregate(runs)
    assert "incomplete" in caplog.text and "broken" in caplog.text       # skipped, named
    assert "protocol 'plugin_protocol' is not registered" in caplog.text
    assert "plugin_protocol" not in text
    rows = _rows(text)

    def check(key, mean, std, seeds):
        r = rows[key]
        assert float(r["mean"]) == pytest.approx(mean, abs=1e-4)
        assert (r["std"] == "") if std is None else float(r["std"]) == pytest.approx(std, abs=1e-4)
        assert int(r["seeds"]) == seeds

    pop_std = math.sqrt(8 / 3)                         # of 60, 62, 64 (population std)
    check(("fewshot", "dtd", "coop", "16", "accuracy"), 62.0, pop_std, 3)
    check(("fewshot", "eurosat", "coop", "16", "accuracy"), 70.0, 0.0, 3)
    check(("fewshot", "average (2 datasets)", "coop", "16", "accuracy"), 66.0, None, 3)
    # the datasets' settings differ (their hash covers the dataset): each row names its own
    assert rows[("fewshot", "dtd", "coop", "16", "accuracy")]["setting"] == \
        hashlib.sha256(b"fewshot/dtd/coop").hexdigest()
    assert rows[("fewshot", "average (2 datasets)", "coop", "16", "accuracy")]["setting"] == ""
    check(("fewshot", "dtd", "coop", "1", "accuracy"), 40.0, 0.0, 1)
    assert ("fewshot", "average (1 datasets)", "coop", "1", "accuracy") not in rows

    check(("base2novel", "dtd", "dcp", "16", "base"), 81.0, 1.0, 2)
    check(("base2novel", "dtd", "dcp", "16", "novel"), 62.0, 2.0, 2)
    check(("base2novel", "dtd", "dcp", "16", "hm"), 2 * 81 * 62 / 143, None, 2)
    check(("base2novel", "eurosat", "dcp", "16", "hm"), 2 * 90 * 50 / 140, None, 1)
    avg = ("base2novel", "average (2 datasets)", "dcp", "16")
    check(avg + ("base",), 85.5, None, 1)
    check(avg + ("novel",), 56.0, None, 1)
    check(avg + ("hm",), 2 * 85.5 * 56 / 141.5, None, 1)

    check(("cross_dataset", "imagenet", "maple", "16", "accuracy"), 71.0, 1.0, 2)
    check(("cross_dataset", "caltech101", "maple", "16", "accuracy"), 91.0, 1.0, 2)
    check(("cross_dataset", "dtd", "maple", "16", "accuracy"), 42.0, 2.0, 2)
    check(("cross_dataset", "average (2 targets)", "maple", "16", "accuracy"), 66.5, None, 2)
    assert rows[("cross_dataset", "dtd", "maple", "16", "accuracy")]["source"] == "imagenet"

    assert "| dtd | coop | 16 | 62.00 ± 1.63 | 3 |" in md
    assert "| dtd | dcp | 16 | 81.00 ± 1.00 | 62.00 ± 2.00 | 70.24 | 2 |" in md
    assert "| imagenet | average (2 targets) | maple | 16 | 66.50 | 2 |" in md
    assert (runs / "summary.md").read_text() == md and (runs / "summary.csv").read_text() == text
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_aggregate_command_prints_the_tables(runs, capsys):
    run = R.load_run()
    assert run.main(["aggregate", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "## Few-shot classification" in out and "## Base-to-novel generalisation" in out
    assert "protocol,source,dataset,method,setting,shots,metric,mean,std,seeds" in out
    assert run.main(["aggregate", str(runs / "nothing")]) == 2


def test_macro_f1_is_over_the_classes_present_in_the_labels():
    """Dassl: f1_score(y_true, y_pred, average="macro", labels=unique(y_true)), by hand:
    class 0: 2*1/(2+1) = 2/3, class 1: 2*1/(2+2) = 1/2, class 2: 0; class 3 is only predicted
    (never a label) and class 4 neither: both are left out."""
    from dcp.engine import classification_metrics
    m = classification_metrics([0, 1, 1, 3, 3], [0, 0, 1, 1, 2], num_classes=5)
    assert m["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    assert m["accuracy"] == pytest.approx(40.0)
    assert m["per_class_accuracy"] == [50.0, 50.0, 0.0, None, None]
