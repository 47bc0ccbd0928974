"""The package as pip installs it: away from the checkout, everything it needs comes with it.

- setup.cfg lists every package and ships every data file; no file points to a "spec"
  outside the repository (docs/methods.md is the reference);
- a non-editable install into a target folder (pip, no downloads), run by a fresh
  interpreter from a folder outside the checkout, finds its split manifest, BPE vocabulary
  and mini-world CLIP as package data, and `load_plugins()` finds `./plugins/*.py` and the
  `dcp.fusions` entry point of a separately installed plugin package (about 6 s: two pip
  builds and one interpreter, shared by the four `test_installed_*`);
- the editable install of the checkout's `.venv` (`pip install -e .`) resolves to the
  checkout and finds its `plugins/` from any folder.
"""
from __future__ import annotations

import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "dcp", "data_splits")
TEXT = "a photo of a cat"
TOKENS = [49406, 320, 1125, 539, 320, 2368, 49407, 0]   # OpenAI's ids for TEXT, then padding


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    return cfg


def cfg_list(value: str):
    return [x.strip() for x in value.replace(",", "\n").splitlines() if x.strip()]


def package_dirs():
    """Package name -> its folder in the checkout, as setup.cfg maps them."""
    cfg = setup_cfg()
    mapped = dict(line.split("=") for line in cfg_list(cfg["options"].get("package_dir", "")))
    mapped = {k.strip(): v.strip() for k, v in mapped.items()}
    return {name: REPO / mapped.get(name, name.replace(".", "/"))
            for name in cfg_list(cfg["options"]["packages"])}


# --------------------------------------------------------------------------- setup.cfg, docs
def test_setup_cfg_lists_every_package():
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "dcp").rglob("__init__.py")}
    listed = package_dirs()
    assert set(listed) == found | {"dcp.data_splits"}
    assert listed["dcp.data_splits"] == REPO / "data_splits"
    assert all(d.is_dir() for d in listed.values()), listed


def test_every_data_file_is_package_data():
    """A file beside the modules that package_data does not list would be missing once
    installed (the BPE vocabulary, the split manifest, the mini-world CLIP)."""
    data = {name: cfg_list(v) for name, v in setup_cfg()["options.package_data"].items()}
    for name, folder in package_dirs().items():
        patterns = data.get(name, [])
        files = [p.name for p in folder.iterdir()
                 if p.is_file() and p.suffix not in (".py", ".pyc")]
        unlisted = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
        assert not unlisted, f"{name}: add {unlisted} to [options.package_data] in setup.cfg"
        for pat in patterns:
            assert any(fnmatch.fnmatch(f, pat) for f in files), f"{name}: {pat} matches no file"
    assert "bpe_simple_vocab_16e6.txt.gz" in data["dcp.clip"]
    assert "MANIFEST.json" in data["dcp.data_splits"]


def test_no_pointer_to_a_spec_outside_the_repository():
    """Comments cite docs/methods.md by section name, not a "spec section N" nobody has."""
    roots = [REPO / d for d in ("dcp", "configs", "bench", "plugins")]
    files = [p for r in roots for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [REPO / "run.py", REPO / "README.md"]
    bad = []
    for path in files:
        text = path.read_bytes().lower()
        for needle in ("spec §".encode(), b"spec section"):
            for n, line in enumerate(text.splitlines(), 1):
                if needle in line:
                    bad.append(f"{path.relative_to(REPO)}:{n}")
    assert not bad, f"point to docs/methods.md instead: {bad}"


# --------------------------------------------------------------------------- helpers
def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DCP_", "PYTHON")) and k not in ("VIRTUAL_ENV",)}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def run(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}"
    return r


def probe(python, cwd, env, script: str) -> dict:
    """Run `script` (it sets `out`) in a fresh interpreter; return `out`."""
    code = ("import json\nout = {}\n" + textwrap.dedent(script)
            + "\nprint('PROBE ' + json.dumps(out))")
    r = run([python, "-c", code], cwd, env)
    line = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")][-1]
    return json.loads(line[len("PROBE "):])


PLUGIN_MODULE = '''
from dcp.fusion import PromptFusion
from dcp.registry import FUSIONS


@FUSIONS.register("{name}")
class Fusion(PromptFusion):
    supports = ("ivlp",)

    def forward(self, v, t):
        return v, t
'''

PLUGIN_SETUP_CFG = """\
[metadata]
name = my-fusion-pkg
version = 0.0.1

[options]
packages = my_fusion_pkg

[options.entry_points]
dcp.fusions =
    my_fusion = my_fusion_pkg.fusion
"""

INSTALLED_PROBE = """
import sys
import torch
import dcp, dcp.miniworld
from dcp import clip
from dcp.clip.tokenizer import VOCAB_FILE
from dcp.config import config_from_dict
from dcp.data import splits
from dcp.methods import build_method
from dcp.registry import FUSIONS, load_plugins, plugin_dirs

out["dcp"] = dcp.__file__
out["manifest"] = str(splits.MANIFEST)
out["manifest_datasets"] = sorted(splits.load_manifest())
out["vocab"] = str(VOCAB_FILE)
out["tokens"] = clip.tokenize([%r])[0, :8].tolist()
model, _ = clip.load("miniworld", device="cpu")
out["miniworld_clip"] = [str(dcp.miniworld.CHECKPOINT),
                         list(model.encode_text(clip.tokenize(["a red circle."])).shape)]
out["plugin_dirs"] = [str(d) for d in plugin_dirs()]
out["loaded"] = load_plugins()
out["fusions"] = FUSIONS.names()
out["my_fusion_file"] = sys.modules[FUSIONS.get("my_fusion").__module__].__file__
tiny = clip.CLIP(64, 32, 2, 128, 8, 77, 49408, 64, 1, 2).eval()
for name in ("my_fusion", "cwd_fusion"):
    cfg = config_from_dict({"method": {"name": "ivlp", "fusion": name, "depth": 2}})
    m = build_method(cfg.method, tiny, ["cat", "dog"])
    out[name] = [type(m.fusion).__module__, list(m(torch.randn(3, 3, 32, 32)).shape)]
""" % TEXT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """dcp (non-editable) and a plugin package pip-installed into one target folder, and the
    probe's findings from a fresh interpreter in a folder with `plugins/cwd_fusion.py`."""
    tmp = tmp_path_factory.mktemp("installed")
    src, site, work = tmp / "src", tmp / "site", tmp / "work"
    # Build from a copy so the build leaves no build/ or egg-info in the checkout.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    pkg = tmp / "my_fusion_pkg_src"
    (pkg / "my_fusion_pkg").mkdir(parents=True)
    (pkg / "my_fusion_pkg" / "__init__.py").write_text("")
    (pkg / "my_fusion_pkg" / "fusion.py").write_text(PLUGIN_MODULE.format(name="my_fusion"))
    (pkg / "setup.cfg").write_text(PLUGIN_SETUP_CFG)
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    (work / "plugins").mkdir(parents=True)
    (work / "plugins" / "cwd_fusion.py").write_text(PLUGIN_MODULE.format(name="cwd_fusion"))
    (work / "plugins" / "_skipped.py").write_text("raise RuntimeError('_ files are skipped')\n")

    env = clean_env()
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "--target", site]
    run(pip + [src], tmp, env)
    run(pip + [pkg], tmp, env)
    out = probe(sys.executable, work, clean_env(PYTHONPATH=str(site)), INSTALLED_PROBE)
    return site, work, out


# --------------------------------------------------------------------------- installed
def test_installed_package_is_imported_from_the_target(installed):
    site, _, out = installed
    assert Path(out["dcp"]) == site / "dcp" / "__init__.py"


def test_installed_package_data(installed):
    site, _, out = installed
    assert Path(out["manifest"]) == site / "dcp" / "data_splits" / "MANIFEST.json"
    with open(REPO / "data_splits" / "MANIFEST.json", encoding="utf-8") as f:
        assert out["manifest_datasets"] == sorted(json.load(f)["splits"]) != []
    assert Path(out["vocab"]) == site / "dcp" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    assert out["tokens"] == TOKENS
    checkpoint, text_shape = out["miniworld_clip"]
    assert Path(checkpoint) == site / "dcp" / "miniworld" / "miniworld-clip.pt"
    assert text_shape[0] == 1


def test_installed_package_loads_plugins_of_the_current_folder(installed):
    site, work, out = installed
    assert out["plugin_dirs"] == [str((work / "plugins").resolve())]   # no checkout plugins/
    assert str((work / "plugins" / "cwd_fusion.py").resolve()) in out["loaded"]
    assert not any("_skipped" in item for item in out["loaded"])
    assert "cwd_fusion" in out["fusions"] and "gated_coupling" not in out["fusions"]
    assert out["cwd_fusion"][1] == [3, 2]                     # usable from a config


def test_installed_plugin_package_registers_through_its_entry_point(installed):
    site, _, out = installed
    assert "entry point my_fusion = my_fusion_pkg.fusion" in out["loaded"]
    assert "my_fusion" in out["fusions"]
    assert Path(out["my_fusion_file"]) == site / "my_fusion_pkg" / "fusion.py"
    assert out["my_fusion"] == ["my_fusion_pkg.fusion", [3, 2]]


# --------------------------------------------------------------------------- editable
def test_editable_install_resolves_to_the_checkout(tmp_path):
    if not VENV_PYTHON.is_file():
        pytest.skip(f"no {VENV_PYTHON} (the checkout's venv with `pip install -e .`)")
    out = probe(VENV_PYTHON, tmp_path, clean_env(), """
        import dcp
        from dcp.data import splits
        from dcp.registry import FUSIONS, load_plugins, plugin_dirs
        out["dcp"] = dcp.__file__
        out["manifest"] = str(splits.MANIFEST)
        out["splits_dir"] = str(splits.SPLITS_DIR)
        out["plugin_dirs"] = [str(d) for d in plugin_dirs()]
        out["loaded"] = load_plugins(entry_points=False)
        out["gated_coupling"] = "gated_coupling" in FUSIONS
    """)
    assert Path(out["dcp"]).resolve() == REPO / "dcp" / "__init__.py", "pip install -e . in .venv"
    assert Path(out["manifest"]).resolve() == REPO / "data_splits" / "MANIFEST.json"
    assert Path(out["splits_dir"]).resolve() == REPO / "data_splits"
    assert [Path(d) for d in out["plugin_dirs"]] == [REPO / "plugins"]
    assert str(REPO / "plugins" / "gated_coupling.py") in out["loaded"]
    assert out["gated_coupling"]
