"""The mini world: generated pictures where CLIP-style pre-training works in minutes on a CPU.

No pretrained CLIP can be downloaded offline, and random weights show that code runs, not that
prompts learn. The mini world closes that gap:

    world.py      pictures of one object (shape, colour, pattern, size, position, background)
                  in two domains (photo, sketch), with captions; deterministic from a seed
    pretrain.py   contrastive pre-training of a tiny CLIP (OpenAI's architecture and tokenizer)
    data.py       benchmark tasks as split-file datasets (`miniworld_shapes`, `..._sketch`,
                  `miniworld_objects`), registered in `dcp.registry.DATASETS`
    demo.py       the offline demo: zero-shot CLIP, then few-shot DCP

    python -m dcp.miniworld make-data --root DATA
    python -m dcp.miniworld pretrain --out my-clip.pt --seed 0
    python run.py --cfg configs/miniworld/dcp.yaml --data DATA --dataset miniworld_shapes

`CHECKPOINT` is the shipped pre-trained tiny CLIP (OpenAI state-dict format, fp16; `--clip
miniworld`), with its record (command, settings, time, zero-shot accuracies) in `RECORD`.
This file imports nothing, so the CLIP loader can name the checkpoint without an import cycle.
"""
from pathlib import Path

CHECKPOINT = Path(__file__).resolve().with_name("miniworld-clip.pt")
RECORD = CHECKPOINT.with_suffix(".json")

__all__ = ["CHECKPOINT", "RECORD"]
