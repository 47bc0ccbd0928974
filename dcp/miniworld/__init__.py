"""The mini world (README, "Mini world"): generated pictures (world.py) on which a tiny CLIP
pre-trains in minutes on a CPU (pretrain.py), benchmark tasks registered as datasets (data.py),
and the offline demo (demo.py); `python -m dcp.miniworld --help` for the commands.

`CHECKPOINT` is the shipped tiny CLIP (`--clip miniworld`), `RECORD` its JSON record. This file
imports nothing, so the CLIP loader can name the checkpoint without an import cycle.
"""
from pathlib import Path

CHECKPOINT = Path(__file__).resolve().with_name("miniworld-clip.pt")
RECORD = CHECKPOINT.with_suffix(".json")

__all__ = ["CHECKPOINT", "RECORD"]
