"""OpenAI-compatible CLIP: the model (`model.py`), its tokenizer and checkpoint loading:
`model, preprocess = clip.load("ViT-B/16")`, `tokens = clip.tokenize(["a photo of a dog."])`."""
from dcp.clip.loading import (CLIP_MEAN, CLIP_STD, CheckpointError, available_models,
                              image_transform, load, read_state_dict)
from dcp.clip.model import CLIP, build_model
from dcp.clip.tokenizer import Tokenizer, tokenize

__all__ = ["CLIP", "CLIP_MEAN", "CLIP_STD", "CheckpointError", "Tokenizer", "available_models",
           "build_model", "image_transform", "load", "read_state_dict", "tokenize"]
