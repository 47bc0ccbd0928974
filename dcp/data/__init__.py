"""Datasets for dcp: CoOp's benchmark folders read as users keep them, reproducible splits.

Public API (what the engine uses):

    Datum(path: str, label: int, classname: str)          # path absolute, label = class index
    DatasetError(ValueError)                              # bad input; names the path and layout
    build_dataset(name, root, *, split_file="", fewshot_cache=True) -> DatasetSplits
        .name, .train / .val / .test: list[Datum], .classnames: list[str] (index = label),
        .template (CoOp's zero-shot template, e.g. "a photo of a {}, a type of pet."),
        .split_info {"file", "sha256", "matches_published": True | False | None, "note"},
        .imagenet_indices (imagenet_a / imagenet_r: label -> index among ImageNet's 1000
        classes; None elsewhere), .fewshot_info (after fewshot), .dataset_dir, .image_dir
    detect_dataset(path) -> (name, root)                  # data root or one dataset's folder
    fewshot(splits, shots, seed, run_dir=None) -> DatasetSplits   # K train, min(K,4) val per class
    save_fewshot(draw, path), load_fewshot(path)          # the draw as readable JSON
    subsample_classes(splits, "all" | "base" | "new") -> DatasetSplits
    build_transform(train: bool, size: int = 224)         # PIL -> (3, size, size) tensor
    train_loader(data, transform, batch_size, seed, num_workers, rank, world)   # see loader.py
    eval_loader(data, transform, batch_size, num_workers, rank, world)
    batches(loader, on_bad_image) -> (images (B,3,S,S), labels (B,), indices (B,)) per batch
    check_images(data, on_bad_image, desc) -> data        # every header read before a run
    python -m dcp.data.make_split {caltech101,dtd,eurosat,food101,ucf101,sun397,folder,csv} --root ...

Registered datasets (`dcp.registry.DATASETS`, folders under one data root as in CoOp's
DATASETS.md): caltech101 (caltech-101/), oxford_pets, stanford_cars, oxford_flowers,
food101 (food-101/), fgvc_aircraft, sun397, dtd, eurosat, ucf101, imagenet, imagenetv2,
imagenet_sketch (imagenet-sketch/), imagenet_a (imagenet-adversarial/), imagenet_r
(imagenet-rendition/); plus `folder` (train/ val/ test/ of <class>/ folders, or <class>/ with a
split file) and `csv` (path,label[,classname] rows) for users' own data.

Conventions:
- Class names are raw (underscores kept, e.g. "Apply_Eye_Makeup"); prompt code does
  `.replace("_", " ")` (docs/methods.md).
- ImageNet: train = images/train, test = images/val, and val = test as in CoOp. ImageNetV2,
  -Sketch, -A, -R are evaluation-only (empty train/val); A and R have 200 classes labelled
  0..199 in sorted-wnid order, mapped to ImageNet's labels by `imagenet_indices`.
  `classnames.txt` is read from the variant's folder, else from `<root>/imagenet/`.
- Split files: see `dcp.data.splits` (lookup order, checksums against data_splits/MANIFEST.json);
  few-shot draws and the released code's `split_fewshot/*.pkl`: see `dcp.data.fewshot`.
- Every image listed by a split is checked to exist at load (one directory listing per
  folder); decoding errors are raised (or skipped) at load time naming the file.
- Base/novel: labels sorted, the first ceil(C/2) are base, the rest new, each relabelled from 0.
- Data folders are never written to; records go to the run folder and data_splits/.
"""
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
