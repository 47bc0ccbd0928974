"""Engine pieces against hand-computed references: the LR schedule, metrics, checkpoints,
samplers, per-epoch seeding, per-class tensors for class subsets, run naming."""
from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import pytest
import torch

import runfixtures as R
from dcp.clip import CheckpointError
from dcp.clip.model import CLIP
from dcp.config import ConfigError, load_config, to_dict
from dcp.data import DatasetSplits, Datum, ImageDataset
from dcp.data.loader import EvalBatches, SeededImages, TrainBatches
from dcp.engine import Context, classification_metrics, lr_at_epoch, rng_state, set_rng_state
from dcp.experiment import class_index, data_root, model_for, per_class_keys, resolve
from dcp.rundir import (RunError, RunFolder, check_resumable, load_checkpoint, method_tag,
                        run_folder, setting_hash)
from dcp.methods import build_method


# --------------------------------------------------------------------------- LR schedule
def test_lr_schedule_matches_the_spec_numbers():
    lr, E = 0.0035, 20
    got = [lr_at_epoch(e, lr, E) for e in range(E)]
    assert got[0] == 1e-5                                      # constant warm-up epoch
    assert got[1] == pytest.approx(0.0035, abs=1e-15)          # cos(0)
    assert got[2] == pytest.approx(0.0035 * 0.5 * (1 + math.cos(math.pi / 20)), abs=1e-15)
    assert got[11] == pytest.approx(0.00175, abs=1e-15)        # halfway: cos(pi/2) = 0
    assert got[19] == pytest.approx(0.0035 * 0.5 * (1 + math.cos(math.pi * 18 / 20)), abs=1e-15)
    # Dassl: the warm-up wraps CosineAnnealingLR(T_max=E), which starts stepping at epoch 1
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=E)
    ref = []
    for _ in range(1, E):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got[1:] == pytest.approx(ref, rel=1e-12)
    assert lr_at_epoch(0, 0.002, 10, warmup_epochs=0) == pytest.approx(0.002)


# --------------------------------------------------------------------------- metrics
def test_classification_metrics_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 0, -1]            # the last image was skipped (undecodable)
    m = classification_metrics(preds, labels, num_classes=4)
    assert m["num_images"] == 5 and m["num_skipped"] == 1
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["per_class_accuracy"] == [50.0, 100.0, 0.0, None]     # class 3 has no image
    # F1: class 0: 2*1/(2+2) = .5, class 1: 2*2/(2+3) = .8, class 2: 0 (class 3 absent)
    assert m["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 0.0) / 3)


# --------------------------------------------------------------------------- checkpoints
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ctx = torch.nn.Parameter(torch.randn(3, 4))
        self.register_buffer("running", torch.zeros(2))

    def trainable_state_dict(self):
        return dict(self.state_dict())


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    cfg = load_config(None, ["method.name=coop"])
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.ctx.sum().backward()
    opt.step()
    random.seed(5)
    torch.manual_seed(5)
    RunFolder(tmp_path).save_checkpoint(tmp_path / "last.pt", model, cfg, 3, [{"epoch": 3, "loss": 1.0}],
                                        optimizer=opt.state_dict(), rng=rng_state(), lr=0.1)
    expected = (random.random(), torch.rand(3))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["epoch"] == 3 and ck["method"] == "coop" and ck["config"] == to_dict(cfg)
    assert torch.equal(ck["state_dict"]["ctx"], model.ctx.detach())
    assert ck["optimizer"]["state"][0]["momentum_buffer"].shape == (3, 4)
    random.seed(0)
    torch.manual_seed(0)
    set_rng_state(ck["rng"])                   # the RNG states come back exactly
    assert (random.random(), torch.rand(3)) == (expected[0], pytest.approx(expected[1]))
    assert isinstance(rng_state()["python"], torch.Tensor)

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    from dcp.utils import atomic_torch_save
    atomic_torch_save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dcp run checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with open(tmp_path / "evil.pt", "wb") as f:          # a pickle that would run code
        pickle.dump({"format": _Tiny}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "evil.pt")


def test_resume_refuses_another_setting():
    a = to_dict(load_config(None, ["method.name=coop"]))
    b = to_dict(load_config(None, ["method.name=coop", "optim.lr=0.1", "data.num_workers=7"]))
    check_resumable(a, to_dict(load_config(None, ["method.name=coop", "data.num_workers=7"])), Path("x"))
    with pytest.raises(RunError, match="optim differ"):
        check_resumable(a, b, Path("x"))


# --------------------------------------------------------------------------- samplers, seeding
def test_train_batches_split_the_same_global_batches_over_processes():
    idx = lambda batches: [[i for _, i in b] for b in batches]      # keys are (seed, index)
    keys = list(TrainBatches(10, 4, seed=7))
    assert all(s == 7 for b in keys for s, _ in b)
    one = idx(keys)
    assert len(one) == 2 and all(len(b) == 4 for b in one)          # last 2 images dropped
    assert len(set(sum(one, []))) == 8
    two = [idx(TrainBatches(10, 4, seed=7, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one
    assert idx(TrainBatches(10, 4, seed=8)) != one                 # another epoch, another order
    batches = TrainBatches(10, 4, seed=7)
    batches.set_epoch(8)                                            # one sampler, next epoch
    assert idx(batches) == idx(TrainBatches(10, 4, seed=8))
    small = idx(TrainBatches(3, 4, seed=7))                         # fewer than a batch: one batch
    assert len(small) == 1 and sorted(small[0]) == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot be split over 2 processes"):
        TrainBatches(10, 3, seed=0, rank=0, world=2)


def test_eval_batches_give_every_image_once_in_single_process_batches():
    one = list(EvalBatches(10, 3))
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    parts = [list(EvalBatches(10, 3, rank=r, world=3)) for r in range(3)]
    assert sorted(sum(parts, []), key=lambda b: b[0]) == one
    assert parts[0] == [[0, 1, 2], [9]]


def test_augmentation_depends_only_on_seed_and_index(tmp_path):
    R.make_folder_dataset(tmp_path, counts={"train": 2})
    data = [Datum(str(p), 0, "x") for p in sorted(tmp_path.rglob("*.png"))]
    from dcp.data import build_transform
    base = ImageDataset(data, build_transform(True, 16))
    state = torch.get_rng_state()
    a, b = SeededImages(base)[1, 2][0], SeededImages(base)[1, 2][0]
    torch.rand(5)
    assert torch.equal(a, b) and torch.equal(SeededImages(base)[1, 2][0], a)
    assert not torch.equal(SeededImages(base)[2, 2][0], a)
    torch.set_rng_state(state)
    SeededImages(base)[1, 0]
    assert torch.equal(torch.get_rng_state(), state)        # the caller's RNG is untouched



def test_training_loader_keeps_workers_and_follows_the_epoch(tmp_path):
    """Decoding in persistent workers, pinned memory on CUDA; `set_epoch` changes the batches
    the same (persistent) loader yields."""
    from dcp.data import batches as decoded, build_transform, train_loader
    R.make_folder_dataset(tmp_path, counts={"train": 4})
    data = [Datum(str(p), 0, "x") for p in sorted(tmp_path.rglob("*.png"))]
    loader = train_loader(data, build_transform(True, 16), 4, seed=1, num_workers=1)
    batches = loader.batch_sampler
    assert loader.persistent_workers and loader.num_workers == 1
    assert loader.pin_memory == torch.cuda.is_available()
    def epoch():
        return {int(i): image for images, _, idx in decoded(loader) for image, i in zip(images, idx)}

    first = epoch()
    again = epoch()
    assert all(torch.equal(first[i], again[i]) for i in first)          # same epoch seed
    batches.set_epoch(2)
    second = epoch()
    assert set(second) == set(first) == set(range(len(data)))
    assert not all(torch.equal(first[i], second[i]) for i in first)     # other crops and flips

# --------------------------------------------------------------------------- class subsets
@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIP(**R.TINY).eval()


def _splits(name, classnames, indices=None, subsample="all"):
    return DatasetSplits(name, [], [], [], list(classnames), "a photo of a {}.", {},
                         imagenet_indices=indices, subsample=subsample)


def test_class_specific_context_is_sliced_for_a_class_subset(clip):
    names = [f"class {i}" for i in range(10)]
    idx = [1, 3, 4, 8]
    cfg = load_config(None, ["method.name=coop", "method.n_ctx=2", "method.class_specific=true"])
    assert per_class_keys(cfg, clip, "a photo of a {}.") == ["ctx"]
    torch.manual_seed(1)
    full = build_method(cfg.method, clip, names)
    source = _splits("imagenet", names)
    sub_split = _splits("imagenet_a", [names[i] for i in idx], idx)
    assert class_index(source, sub_split) == idx
    sub = model_for(sub_split, full, source, cfg, clip, Context(torch.device("cpu")), ["ctx"])
    assert torch.equal(sub.ctx, full.ctx[idx])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sub(images), full(images)[:, idx], rtol=1e-5, atol=1e-4)
    # novel classes have no learned context: refused with the reason
    novel = _splits("dtd", ["other a", "other b"], subsample="new")
    with pytest.raises(RunError, match="per-class tensors"):
        model_for(novel, full, source, cfg, clip, Context(torch.device("cpu")), ["ctx"])
    # the ImageNet mapping applies only to an ImageNet source with all its classes
    assert class_index(_splits("imagenet", names, subsample="base"), sub_split) is None


def test_shared_prompts_serve_any_class_list(clip):
    cfg = load_config(None, ["method.name=maple", "method.depth=2"])
    assert per_class_keys(cfg, clip, "a photo of a {}.") == []
    torch.manual_seed(2)
    model = build_method(cfg.method, clip, ["cat", "dog", "car"])
    other = model_for(_splits("x", ["boat", "cat"]), model, _splits("y", ["cat", "dog", "car"]),
                      cfg, clip, Context(torch.device("cpu")), [])
    ref = build_method(cfg.method, clip, ["boat", "cat"])
    ref.load_trainable_state_dict(model.trainable_state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(other(images), ref(images))


# --------------------------------------------------------------------------- settings
def test_run_settings_and_folder_names(tmp_path):
    cfg = load_config(R.CONFIGS / "dcp_released_vitb16.yaml",
                      ["data.dataset=dtd", "data.root=/data", "output=out"])
    run = resolve(cfg, 4, 2)
    assert method_tag(run) == "dcp_released"
    folder = run_folder(run)
    assert folder.parent.parent.parent == Path("out/fewshot/dtd")
    assert folder.parent.parent.name == f"dcp_released-{setting_hash(run)[:8]}"
    assert folder.parts[-2:] == ("shots4", "seed2")
    coop = load_config(R.CONFIGS / "coop_vitb16.yaml", ["data.dataset=dtd"])
    assert [resolve(coop, k, 1).optim.epochs_for(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    xd = resolve(load_config(R.CONFIGS / "maple_xd_vitb16.yaml", ["protocol=cross_dataset"]), 16, 1)
    assert len(xd.eval.datasets) == 10 and "imagenet" not in xd.eval.datasets
    assert (xd.method.depth, xd.optim.lr, xd.optim.epochs) == (3, 0.0026, 2)
    dg = resolve(load_config(R.CONFIGS / "maple_vitb16.yaml", ["protocol=domain_generalization"]), 16, 1)
    assert dg.eval.datasets == ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    with pytest.raises(ConfigError, match="eval.datasets"):
        resolve(load_config(None, ["eval.datasets=[dtd]"]), 16, 1)
    with pytest.raises(ConfigError, match="data.subsample"):
        resolve(load_config(None, ["protocol=base2novel", "data.subsample=base"]), 16, 1)
    with pytest.raises(ConfigError, match="epochs_by_shots"):
        load_config(None, ["optim.epochs_by_shots={1: many}"])
    assert load_config(None, ["data.crop_scale=[0.5, 1]"]).data.crop_scale == [0.5, 1.0]
    for bad in ("[0, 1]", "[0.5]", "[0.9, 0.5]", "[0.5, 1.5]"):
        with pytest.raises(ConfigError, match="data.crop_scale is"):
            load_config(None, [f"data.crop_scale={bad}"])
    # a data root, or one dataset's own folder (its parent holds the other datasets)
    (tmp_path / "imagenet").mkdir()
    assert data_root("imagenet", str(tmp_path)) == str(tmp_path)
    assert data_root("imagenet", str(tmp_path / "imagenet")) == str(tmp_path)


def test_every_method_config_loads_with_the_spec_defaults():
    expect = {"dcp_vitb16": ("dcp", 0.0035, 20, 4), "dcp_released_vitb16": ("dcp", 0.0035, 20, 4),
              "mudpt_vitb16": ("mudpt", 0.0025, 10, 4), "mudpt_released_vitb16": ("mudpt", 0.0025, 10, 4),
              "coop_vitb16": ("coop", 0.002, 200, 32), "cocoop_vitb16": ("cocoop", 0.002, 10, 1),
              "vpt_vitb16": ("vpt", 0.0025, 5, 4), "ivlp_vitb16": ("ivlp", 0.0035, 5, 4),
              "maple_vitb16": ("maple", 0.0035, 5, 4), "zeroshot_vitb16": ("zeroshot", 0.002, 10, 4)}
    for name, (method, lr, epochs, batch) in expect.items():
        cfg = load_config(R.CONFIGS / f"{name}.yaml")
        assert (cfg.method.name, cfg.optim.lr, cfg.optim.epochs, cfg.optim.batch_size) == \
            (method, lr, epochs, batch), name
        assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.warmup_lr) == (0.9, 5e-4, 1e-5)
        assert cfg.clip == "ViT-B/16"
    dcp = load_config(R.CONFIGS / "dcp_vitb16.yaml").method
    assert (dcp.variant, dcp.n_ctx, dcp.n_ctx_vision, dcp.depth, dcp.share) == ("paper", 16, 16, 10, True)
    assert load_config(R.CONFIGS / "dcp_released_vitb16.yaml").method.variant == "released"
    mudpt = load_config(R.CONFIGS / "mudpt_released_vitb16.yaml").method
    assert (mudpt.variant, mudpt.n_ctx, mudpt.depth) == ("released", 2, 9)
    vpt = load_config(R.CONFIGS / "vpt_vitb16.yaml").method
    assert (vpt.n_ctx, vpt.n_ctx_vision, vpt.depth) == (0, 8, 12)
    assert load_config(R.CONFIGS / "demo.yaml").clip == "miniworld"


def test_the_method_configs_hold_the_spec_prompt_layouts():
    """docs/methods.md, "The family": prompt lengths, depths, init words and the schedules the
    table above does not pin (CoOp's epochs by shots, DCP released's test batch of 16)."""
    photo = "a photo of a"
    layouts = {"ivlp_vitb16": (2, 2, 12, photo), "maple_vitb16": (2, 2, 9, photo),
               "maple_xd_vitb16": (2, 2, 3, photo), "mudpt_vitb16": (2, 2, 9, photo),
               "mudpt_released_vitb16": (2, 2, 9, photo), "dcp_released_vitb16": (16, 16, 10, photo)}
    for name, expected in layouts.items():
        m = load_config(R.CONFIGS / f"{name}.yaml").method
        assert (m.n_ctx, m.n_ctx_vision, m.depth, m.init) == expected, name
    coop_shots = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    for name, n, init, table in [("coop_vitb16", 16, "", coop_shots),
                                 ("coop_ctxv1_vitb16", 4, photo, coop_shots),
                                 ("coop_vitb16_imagenet", 16, "", dict.fromkeys(coop_shots, 50))]:
        cfg = load_config(R.CONFIGS / f"{name}.yaml")
        assert (cfg.method.n_ctx, cfg.method.init, cfg.method.class_token_position) == (n, init, "end")
        assert {k: cfg.optim.epochs_for(k) for k in table} == table, name
    cocoop = load_config(R.CONFIGS / "cocoop_vitb16.yaml").method
    assert (cocoop.n_ctx, cocoop.init) == (4, photo)
    released = load_config(R.CONFIGS / "dcp_released_vitb16.yaml")
    assert (released.method.fusing, released.method.share, released.eval.batch_size) == ("mean", True, 16)
    for name in layouts:
        assert load_config(R.CONFIGS / f"{name}.yaml").optim.warmup_epochs == 1


def test_activation_checkpointing_is_a_config_option(clip):
    from dcp.experiment import build
    for flag in (False, True):
        cfg = load_config(None, ["method.name=maple", "method.depth=2",
                                 f"optim.activation_checkpointing={str(flag).lower()}"])
        assert build(cfg, clip, ["a", "b"], "a photo of a {}.").checkpointing is flag
    with pytest.raises(ConfigError, match="optim.activation_checkpointing"):
        load_config(None, ["optim.activation_checkpointing=sometimes"])


def test_model_switches_are_only_set_by_the_constructor():
    """`speedups`, `checkpointing` and `text_chunk` are fixed for a model's life: nothing in the
    package or run.py assigns them except `PromptModel.__init__` (an evaluation with other
    switches builds another model: `experiment.model_for`)."""
    import ast
    switches = {"speedups", "checkpointing", "text_chunk"}
    found = []
    for path in sorted(R.ROOT.glob("dcp/**/*.py")) + [R.ROOT / "run.py"]:
        tree = ast.parse(path.read_text())
        owner = {}                                  # node -> its innermost function's name
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                owner.update({id(n): fn.name for n in ast.walk(fn)})
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            calls = (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr"
                     and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                     and node.args[1].value in switches)
            if calls or any(isinstance(t, ast.Attribute) and t.attr in switches for t in targets):
                found.append((path.relative_to(R.ROOT).as_posix(),
                              owner.get(id(node), "<module>"), node.lineno))
    assert {(f, name) for f, name, _ in found} == {("dcp/methods/base.py", "__init__")}, found


def test_only_the_writer_cleans_a_run_folder(tmp_path):
    """--force under DDP: ranks > 0 must not delete what rank 0 has just written."""
    for name in ("metrics.json", "final.pt", "last.pt", "fewshot.json"):
        (tmp_path / name).write_text("x")
    RunFolder(tmp_path, writer=False).clean()
    assert len(list(tmp_path.iterdir())) == 4
    RunFolder(tmp_path).clean()
    assert not list(tmp_path.iterdir())


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path):
    import os
    from dcp.utils import atomic_path, atomic_write_text
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    umask = os.umask(0o022)
    try:
        atomic_write_text(path, "new")
    finally:
        os.umask(umask)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o644
