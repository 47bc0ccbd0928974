"""What the user asked for is what runs: explicit values win over derived ones (each derived
key tested), `--dry-run` shows the whole setting and writes nothing, and a config that does not
fit the CLIP says which override fixes it before any folder is made."""
from __future__ import annotations

import logging

import pytest

import runfixtures as R
from dcp.config import load_config


COOP = R.CONFIGS / "coop_vitb16.yaml"


def test_explicit_epochs_win_over_epochs_by_shots(tmp_path, caplog):
    table = load_config(COOP).optim
    assert table.epochs_for(2) == 100 and table.epochs_reason(2) == "optim.epochs_by_shots[2]"
    with caplog.at_level(logging.INFO, logger="dcp"):
        cli = load_config(COOP, ["optim.epochs=2"]).optim
    assert cli.epochs_for(2) == 2 and cli.epochs_for(16) == 2 and cli.epochs_reason(2) == "optim.epochs"
    assert "optim.epochs=2 given explicitly: optim.epochs_by_shots" in caplog.text
    later = tmp_path / "short.yaml"                        # a later file is explicit too
    later.write_text(f"_base_: {COOP}\noptim:\n  epochs: 3\n")
    assert load_config(later).optim.epochs_for(2) == 3
    both = load_config(COOP, ["optim.epochs=2", "optim.epochs_by_shots={2: 7}"]).optim
    assert both.epochs_for(2) == 7 and both.epochs_for(4) == 2   # both given: the table for 2


def test_image_size_zero_means_the_checkpoint_resolution(run, tiny, tmp_path, capsys):
    clip, data = tiny
    args = R.argv("coop", clip, data, tmp_path / "out", "--dry-run")
    assert run.main(args) == 0
    assert "input 32px" in capsys.readouterr().out          # tiny CLIP: 32 x 32
    assert run.main(args + ["data.image_size=48"]) == 0
    assert "input 48px" in capsys.readouterr().out


def test_the_variant_chooses_the_fusion_unless_one_is_given():
    dcp = R.CONFIGS / "dcp_vitb16.yaml"
    assert load_config(dcp).method.fusion_name() == "cmpa"
    assert load_config(dcp, ["method.variant=released"]).method.fusion_name() == "cmpa_released"
    assert load_config(dcp, ["method.variant=released", "method.fusion=cmpa"]).method.fusion_name() == "cmpa"
    mudpt = R.CONFIGS / "mudpt_vitb16.yaml"
    assert load_config(mudpt).method.fusion_name() == "injection"
    assert load_config(mudpt, ["method.variant=released"]).method.fusion_name() == "linear_injection"


def test_dry_run_shows_the_setting_and_writes_nothing(run, tiny, tmp_path, capsys):
    clip, data = tiny
    out = tmp_path / "out"
    assert run.main(R.argv("dcp", clip, data, out, "--dry-run", "optim.lr=0.01")) == 0
    text = capsys.readouterr().out
    assert "# resolved config" in text and "lr: 0.01" in text       # the resolved config
    assert "3 classes, 9 train / 3 val / 9 test images" in text     # the dataset summary
    assert "split file: none (user data: folder layout of" in text
    assert "dcp (fusion cmpa), input 32px" in text and "trainable parameters" in text
    assert "6 training images (per_class few-shot draw), 2 epochs (optim.epochs)" in text
    assert "x 3 steps = 6 steps" in text                            # 6 images, batch 2
    assert not out.exists()                                          # nothing written


def test_a_too_deep_config_names_the_override_before_any_folder(run, tiny, tmp_path, caplog):
    clip, data = tiny
    out = tmp_path / "out"
    args = ["--cfg", str(R.CONFIGS / "dcp_vitb16.yaml"), "--clip", str(clip), "--data", str(data),
            "--output", str(out), "--shots", "2"] + R.COMMON
    caplog.clear()
    assert run.main(args) == 2
    assert "method.depth=10 but this CLIP's text tower has only 2 blocks: set method.depth=2" in caplog.text
    assert not out.exists()
