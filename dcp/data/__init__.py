"""Datasets (CoOp's benchmark folders read as users keep them), split files, few-shot draws and
the loaders; layouts in README.md, "Datasets"; draws in docs/methods.md, "Few-shot draws"."""
from .datasets import DatasetReader, build_dataset, detect_dataset
from .fewshot import fewshot, load_fewshot, save_fewshot, subsample_classes
from .loader import (EvalBatches, ImageDataset, SeededImages, TrainBatches, batches, check_images,
                     eval_loader, train_loader)
from .splits import SPLITS_DIR, DatasetError, DatasetSplits, Datum
from .transforms import CLIP_MEAN, CLIP_STD, build_transform, load_image

__all__ = ["Datum", "DatasetSplits", "DatasetError", "DatasetReader", "SPLITS_DIR",
           "build_dataset", "detect_dataset", "fewshot", "save_fewshot", "load_fewshot",
           "subsample_classes", "build_transform", "load_image", "CLIP_MEAN", "CLIP_STD",
           "ImageDataset", "SeededImages", "TrainBatches", "EvalBatches", "train_loader",
           "eval_loader", "batches", "check_images"]
