"""Helpers for the engine and run.py tests: a tiny CLIP in OpenAI's state-dict format, tiny
image folders in the `folder` dataset layout, and run.py's `main` called in-process."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from PIL import Image

from dcp.clip.model import CLIP

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# embed 64 = text width 64 (MuDPT `released` needs E == Dt); vision width 128 (2 heads).
TINY = dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128,
            vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
            transformer_heads=1, transformer_layers=2)

COLOURS = {"red_thing": (220, 30, 30), "green_thing": (30, 200, 40), "blue_thing": (40, 60, 230),
           "yellow_thing": (230, 210, 30)}


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(CLIP(**TINY).state_dict(), path)
    return path


def make_folder_dataset(root: Path, classes: Sequence[str] = ("red_thing", "green_thing", "blue_thing"),
                        counts: Dict[str, int] = None, size: int = 24) -> Path:
    """`root/{train,val,test}/<class>/*.png`: noisy images of the class's colour."""
    counts = counts or {"train": 3, "val": 1, "test": 3}
    rng = random.Random(0)
    for split, n in counts.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = COLOURS[c]
                im = Image.new("RGB", (size, size), tuple(min(255, max(0, v + rng.randint(-60, 60)))
                                                           for v in base))
                im.putpixel((rng.randrange(size), rng.randrange(size)), (0, 0, 0))
                im.save(root / split / c / f"{i}.png")
    return root


def load_run():
    """run.py as a module (it lives at the project root, outside the package)."""
    spec = importlib.util.spec_from_file_location("dcp_run_script", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (config file, overrides that fit the tiny 2-block CLIP and keep the run short)
METHODS = {
    "zeroshot": ("zeroshot_vitb16", []),
    "coop": ("coop_vitb16", ["method.n_ctx=4", "optim.batch_size=2", "optim.epochs_by_shots={}"]),
    "cocoop": ("cocoop_vitb16", []),
    "vpt": ("vpt_vitb16", ["method.depth=2", "optim.batch_size=2"]),
    "ivlp": ("ivlp_vitb16", ["method.depth=2", "optim.batch_size=2"]),
    "maple": ("maple_vitb16", ["method.depth=2", "optim.batch_size=2"]),
    "dcp": ("dcp_vitb16", ["method.depth=2", "method.n_ctx=4", "method.n_ctx_vision=4",
                           "optim.batch_size=2"]),
    "dcp_released": ("dcp_released_vitb16", ["method.depth=2", "method.n_ctx=4",
                                             "method.n_ctx_vision=4", "optim.batch_size=2"]),
    "mudpt": ("mudpt_vitb16", ["method.depth=2", "optim.batch_size=2"]),
    "mudpt_released": ("mudpt_released_vitb16", ["method.depth=2", "optim.batch_size=2"]),
}
COMMON = ["data.num_workers=0", "eval.batch_size=4", "optim.epochs=2"]


def argv(method: str, clip: Path, data: Path, out: Path, *extra: str, shots: int = 2) -> List[str]:
    cfg, overrides = METHODS[method]
    return (["--cfg", str(CONFIGS / f"{cfg}.yaml"), "--clip", str(clip), "--data", str(data),
             "--output", str(out), "--shots", str(shots), "--seed", "1"]
            + COMMON + overrides + list(extra))


def run_dir(out: Path, method: str, dataset: str = "data", shots: int = 2, seed: int = 1,
            protocol: str = "fewshot") -> Path:
    """The run folder `<out>/<protocol>/<dataset>/<method tag>-<setting hash>/shots<K>/seed<S>`
    of the one setting of `method` under `out` (a path that does not exist if there is none)."""
    found = sorted((out / protocol / dataset).glob(f"{method}-????????"))
    assert len(found) <= 1, f"several settings of {method} under {out}: {found}"
    setting = found[0] if found else out / protocol / dataset / f"{method}-(none)"
    return setting / f"shots{shots}" / f"seed{seed}"


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def weights(folder: Path, name: str = "final.pt") -> Dict[str, torch.Tensor]:
    return torch.load(folder / name, map_location="cpu", weights_only=True)["state_dict"]


def run_error(run, args, caplog, capsys, short: bool = True) -> str:
    """`run.main(args)` fails with exit 2 and exactly one error record, no traceback; returns
    its message. `short`: the message is also one line under 400 characters (a missing
    dataset folder's message quotes the expected layout on further lines)."""
    caplog.clear()
    code = run.main(args)
    err = capsys.readouterr().err
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1, (code, caplog.text)
    assert "Traceback" not in err and "Traceback" not in caplog.text
    msg = errors[0].getMessage()
    assert not short or ("\n" not in msg and len(msg) < 400), msg
    return msg
