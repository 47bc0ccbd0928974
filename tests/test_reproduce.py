"""bench/reproduce.py: every command it generates, for every table, is one run.py accepts.

Pure checks cover every command of every table (run.py's own parser, the presets loaded through
run.py's `build_config`, the protocol's own check, methods x datasets x shots x seeds 1-3, one
output root, `aggregate` last). A handful of commands go through `run.py --dry-run` in-process
on fake benchmark-layout datasets (tests/datafixtures.py) with the tiny 2-block CLIP: the
resolved config, the data, the model and the schedule, nothing written.
"""
from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import datafixtures as D
import runfixtures as R
from dcp.config import load_config
from dcp.protocols import protocol
from dcp.registry import DATASETS

ROOT = R.ROOT
SCRIPT = ROOT / "bench" / "reproduce.py"
DEEP = ("vpt", "ivlp", "maple", "mudpt", "mudpt_released", "dcp", "dcp_released")
TINY_OVERRIDES = {m: ["method.depth=2"] for m in DEEP}     # the tiny CLIP has 2 blocks


def _load():
    spec = importlib.util.spec_from_file_location("dcp_reproduce_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                          # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


rep = _load()


@pytest.fixture(scope="module")
def run():
    return R.load_run()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A data root with every benchmark dataset and the ImageNet family in their on-disk
    layouts (16 training images per class for the split-file datasets, so 16-shot commands run
    unchanged; ImageNet has 1-2 per class), and the tiny CLIP."""
    base = tmp_path_factory.mktemp("reproduce")
    root = base / "data"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(D.COUNTS, "train", 16)
        for name in D.SPLIT_SPECS:
            D.make_split_dataset(root, name)
    D.make_fgvc(root)
    D.make_imagenet_family(root)
    return root, R.save_tiny_clip(base / "tiny-clip.pt")


def _opt(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def _method(cmd):
    """The PRESETS key of a generated command (from its config file)."""
    cfg = _opt(cmd, "--cfg")
    keys = [k for k, p in rep.PRESETS.items() if cfg in {f"configs/{n}.yaml" for n in (p.cfg, p.imagenet, p.transfer) if n}]
    assert len(keys) == 1, cfg
    return keys[0]


# --------------------------------------------------------------------------- pure checks
@pytest.mark.parametrize("name", list(rep.TABLES))
def test_every_command_parses_and_covers_the_table(name, run, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    t = rep.TABLES[name]
    data, out = tmp_path / "data", tmp_path / "out"
    cmds = rep.commands(name, data, out)
    assert cmds[-1] == ["python", "run.py", "aggregate", str(out)]
    grid = defaultdict(set)                                  # (method, dataset) -> {(shots, seed)}
    loaded = {}
    for cmd in cmds[:-1]:
        assert cmd[:2] == ["python", "run.py"]
        options, overrides = run.split_overrides(cmd[2:])
        assert overrides == []
        args = run.parser().parse_args(options)              # run.py's own parser
        assert (args.data, args.output, args.protocol) == (str(data), str(out), t.protocol)
        assert args.dataset in t.datasets and len(args.shots) == 1 and len(args.seed) == 1
        assert not (args.dry_run or args.resume or args.force or args.eval_only)
        method = _method(cmd)
        grid[(method, args.dataset)].add((args.shots[0], args.seed[0]))
        key = (tuple(args.cfg), args.dataset)
        if key not in loaded:                                # config loading, once per preset
            cfg = loaded[key] = run.build_config(args, overrides)
            assert cfg.method.name == method.replace("_released", "")
            released = getattr(cfg.method, "variant", "") == "released"
            assert released == method.endswith("_released")
            assert cfg.protocol == t.protocol and cfg.data.dataset == args.dataset
            assert cfg.data.root == str(data) and cfg.output == str(out)
            assert protocol(cfg.protocol).check(cfg) is None
            assert cfg.data.fewshot_draw == "auto"           # dassl for the benchmarks
    want = defaultdict(set)
    for m in t.methods:
        for d in t.datasets:
            want[(m, d)] = ({(0, 1)} if m == "zeroshot" else
                            {(k, s) for k in t.shots for s in (1, 2, 3)})
    assert grid == want
    assert len(cmds) - 1 == sum(len(v) for v in want.values())


def test_the_tables_the_papers_have():
    assert set(rep.TABLES) == {"dcp-fewshot", "dcp-dg", "mudpt-fewshot", "mudpt-b2n", "mudpt-xd",
                               "mudpt-dg", "maple-b2n"}
    assert rep.TABLES["maple-b2n"].methods == ("zeroshot", "coop", "cocoop", "maple")
    for name, t in rep.TABLES.items():
        assert {"zeroshot", "coop"} <= set(t.methods), name
        assert name.split("-")[0] in {m.split("_")[0] for m in t.methods}, name
        if t.protocol in rep.TRANSFER:
            assert t.datasets == ("imagenet",) and t.shots == (16,)
        if t.protocol == "base2novel":
            assert t.shots == (16,) and t.datasets == rep.BENCHMARK
        if t.protocol == "fewshot":
            assert t.shots == (1, 2, 4, 8, 16) and t.datasets == rep.BENCHMARK
        assert t.targets == tuple(protocol(t.protocol).targets)  # the protocol's own test sets


def test_presets_exist_and_the_coop_rows_are_ctxv1():
    for p in rep.PRESETS.values():
        for name in filter(None, (p.cfg, p.imagenet, p.transfer)):
            assert (ROOT / "configs" / f"{name}.yaml").is_file(), name
            load_config(ROOT / "configs" / f"{name}.yaml")
    coop = rep.PRESETS["coop"]
    for dataset, epochs in (("dtd", [50, 100, 100, 200, 200]), ("imagenet", [50] * 5)):
        for proto in ("fewshot", "base2novel", "cross_dataset"):
            cfg = load_config(ROOT / coop.config(dataset, proto))
            assert (cfg.method.name, cfg.method.n_ctx, cfg.method.init) == ("coop", 4, "a photo of a")
            assert cfg.method.class_token_position == "end" and not cfg.method.class_specific
            assert (cfg.optim.lr, cfg.optim.batch_size) == (0.002, 32)
            assert [cfg.optim.epochs_for(k) for k in rep.SHOTS] == epochs
    maple = load_config(ROOT / rep.PRESETS["maple"].config("imagenet", "domain_generalization"))
    assert (maple.method.depth, maple.optim.lr, maple.optim.epochs) == (3, 0.0026, 2)
    assert rep.PRESETS["maple"].config("dtd", "base2novel") == "configs/maple_vitb16.yaml"
    for name in ("coop_ctxv1_vitb16", "coop_ctxv1_vitb16_imagenet"):
        text = (ROOT / "configs" / f"{name}.yaml").read_text()
        assert "_base_:" in text and "spec section" not in text and "docs/methods.md" in text


def test_dataset_folders_are_the_readers_own():
    for name, folder in rep.FOLDERS.items():
        assert DATASETS.get(name).folder == folder, name


def test_options_restrict_and_add(tmp_path):
    cmds = rep.commands("maple-b2n", "/d", "/o", clip="/c/ViT-B-16.pt", methods=["maple"],
                        datasets=["dtd"], seeds=[1], overrides={"*": ["a.b=1"], "maple": ["method.depth=2"]})
    assert cmds == [["python", "run.py", "--cfg", "configs/maple_vitb16.yaml", "--data", "/d",
                     "--dataset", "dtd", "--protocol", "base2novel", "--shots", "16", "--seed", "1",
                     "--output", "/o", "--clip", "/c/ViT-B-16.pt", "a.b=1", "method.depth=2"],
                    ["python", "run.py", "aggregate", "/o"]]
    assert rep.commands("dcp-dg", "/d", "/o", overrides=["x=1"])[0][-1] == "x=1"
    for bad in (dict(methods=["dcp"]), dict(datasets=["imagenetv2"])):
        with pytest.raises(ValueError):
            rep.commands("maple-b2n", "/d", "/o", **bad)
    with pytest.raises(ValueError, match="unknown table"):
        rep.commands("coop-fewshot", "/d", "/o")


def test_requirements_name_the_folders_and_the_checkpoint(bench, tmp_path):
    root, clip = bench
    needs = rep.requirements("mudpt-xd", root, str(clip))
    assert [ok for _, ok in needs] == [True] * 12
    assert "caltech-101" in needs[1][0] and str(clip) in needs[-1][0]
    needs = rep.requirements("dcp-dg", tmp_path, None)
    assert [ok for _, ok in needs] == [False] * 6
    assert [w.split("/  ")[0] for w, _ in needs[:5]] == [
        str(tmp_path / f) for f in ("imagenet", "imagenetv2", "imagenet-sketch",
                                    "imagenet-adversarial", "imagenet-rendition")]
    assert "ViT-B-16.pt" in needs[-1][0] and "--clip" in needs[-1][0]


# --------------------------------------------------------------------------- the script
def test_the_printed_script_is_the_commands(capsys, tmp_path):
    assert rep.main(["dcp-dg", "--data", str(tmp_path), "--output", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    heads = [l for l in text.splitlines() if l.startswith("#")]
    body = [l for l in text.splitlines() if not l.startswith("#")]
    assert any("imagenet-sketch" in l and "[ ]" in l for l in heads)
    assert body == [shlex.join(c) for c in rep.commands("dcp-dg", tmp_path.resolve(), (tmp_path / "o").resolve())]
    assert rep.main(["--list"]) == 0 and "maple-b2n" in capsys.readouterr().out


def test_run_refuses_missing_data_and_stops_at_the_first_failure(capfd, tmp_path):
    assert rep.main(["maple-b2n", "--data", str(tmp_path), "--run", "--methods", "zeroshot"]) == 2
    assert "not run: missing on disk" in capfd.readouterr().err
    code = rep.run_commands([["python", "-c", "print('one')"],
                             ["python", "-c", "import sys; print('two'); sys.exit(3)"],
                             ["python", "-c", "print('three')"]])
    out = capfd.readouterr()
    assert code == 3 and "one" in out.out and "two" in out.out and "three" not in out.out
    assert "command 2 of 3 exited with status 3" in out.err


def test_the_script_imports_nothing_heavy():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('r', {str(SCRIPT)!r}); "
            "m = importlib.util.module_from_spec(s); sys.modules['r'] = m; s.loader.exec_module(m); "
            "print(sorted(k for k in ('torch', 'dcp', 'yaml', 'numpy') if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


# --------------------------------------------------------------------------- dry runs
# (table, method, training dataset, shots of the command) -> what the dry run must show
DRY = [
    ("dcp-fewshot", "dcp_released", "eurosat", 16, ["dcp_released (fusion cmpa_released)",
                                                     "48 training images (dassl few-shot draw), 20 epochs",
                                                     "test eurosat: 9 images, 3 classes"]),
    ("maple-b2n", "coop", "dtd", 16, ["coop, input 32px, 256 trainable parameters",
                                      "32 training images (dassl few-shot draw), 200 epochs "
                                      "(optim.epochs_by_shots[16])", "test base: 6 images, 2 classes",
                                      "test novel: 3 images, 1 classes"]),
    ("mudpt-b2n", "zeroshot", "fgvc_aircraft", 0, ["zeroshot, input 32px, 0 trainable parameters",
                                                   "test base: 6 images, 2 classes"]),
    ("dcp-dg", "dcp", "imagenet", 16, ["dcp (fusion cmpa)", "(dassl few-shot draw), 20 epochs",
                                      "test imagenet_a: 200 images, 200 classes",
                                      "test imagenet_r: 200 images, 200 classes"]),
    ("mudpt-xd", "coop", "imagenet", 16, ["coop, input 32px", "50 epochs (optim.epochs_by_shots[1])",
                                         "test caltech101: 9 images, 3 classes",
                                         "test ucf101: 9 images, 3 classes"]),
]


@pytest.mark.parametrize("name,method,dataset,shots,shown", DRY, ids=[d[0] for d in DRY])
def test_generated_commands_pass_run_py_dry_run(name, method, dataset, shots, shown, bench, run,
                                                monkeypatch, tmp_path, capsys):
    """The command as generated (tiny CLIP and depth overrides added by `commands`), through
    run.py's main with --dry-run. ImageNet here has 1-2 training images per class, so its
    commands run with --shots 1 instead of 16 (the 16-shot schedule is checked above)."""
    root, clip = bench
    out = tmp_path / "out"
    monkeypatch.chdir(ROOT)
    cmds = rep.commands(name, root, out, clip=str(clip), methods=[method], datasets=[dataset],
                        seeds=[2], overrides=TINY_OVERRIDES)
    (cmd,) = [c for c in cmds[:-1] if _opt(c, "--shots") == str(shots)]
    assert _opt(cmd, "--seed") == "2" and _opt(cmd, "--clip") == str(clip)
    argv = cmd[2:] + ["--dry-run"]
    if dataset == "imagenet":
        argv[argv.index("--shots") + 1] = "1"
    assert run.main(argv) == 0
    text = capsys.readouterr().out
    assert "# resolved config" in text and f"protocol: {rep.TABLES[name].protocol}" in text
    for s in shown:
        assert s in text, (s, text[-3000:])
    assert f"{out}/{rep.TABLES[name].protocol}/{dataset}/{method}-" in text
    assert not out.exists()                                  # a dry run writes nothing


def test_readme_section_names_every_table_and_the_ctxv1_presets():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reproducing the papers' tables", 1)[1].split("\n## ", 1)[0]
    for name, t in rep.TABLES.items():
        runs = len(rep.commands(name, "/d", "/o")) - 1
        assert f"| `{name}` |" in section and f"| {runs} |" in section, name
    for text in ("configs/coop_ctxv1_vitb16.yaml", "configs/coop_ctxv1_vitb16_imagenet.yaml",
                 "data.fewshot_draw", "bench/reproduce.py", "(#datasets)", "--clip"):
        assert text in section, text
