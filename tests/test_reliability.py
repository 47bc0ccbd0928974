"""Reliability of a run (issue 15): damaged checkpoints are refused, a busy run folder is not
shared, a diverging run records nothing as finished, bad input fails with one line naming the
key or path, and a run killed at any write point resumes to the uninterrupted result."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import runfixtures as R
from dcp.utils import CorruptFileError, load_torch_file, verify_zip


def coop(clip, data, out, *extra):
    """CoOp, 1 shot (3 images: one step per epoch), 2 epochs: the cheapest trained run."""
    return R.argv("coop", clip, data, out, *extra, shots=1)


@pytest.fixture(scope="module")
def whole(run, tiny, tmp_path_factory):
    """An uninterrupted run (shared: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("whole")
    assert run.main(coop(*tiny, out)) == 0
    return out, R.run_dir(out, "coop", shots=1)


@pytest.fixture(scope="module")
def stopped(run, tiny, tmp_path_factory):
    """The same run stopped after epoch 1 of 2 (last.pt, fewshot.json; no final.pt)."""
    out = tmp_path_factory.mktemp("stopped")
    assert run.main(coop(*tiny, out, "--stop-after", "1")) == 3
    folder = R.run_dir(out, "coop", shots=1)
    assert (folder / "last.pt").is_file() and not (folder / "final.pt").exists()
    return out, folder


def _copy(src_out: Path, dst_out: Path) -> Path:
    shutil.copytree(src_out, dst_out)
    return R.run_dir(dst_out, "coop", shots=1)


_error = R.run_error


def _data_record(path: Path) -> zipfile.ZipInfo:
    """The largest tensor data record `<archive>/data/<n>` of a torch zip file."""
    with zipfile.ZipFile(path) as zf:
        records = [i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 4]
    info = max(records, key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED          # torch stores, never compresses
    return info


def flip_data_byte(path: Path) -> None:
    """Flip one byte in the middle of a tensor data record (the bytes of a weight)."""
    info = _data_record(path)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)                      # local header: name, extra lengths
        n, m = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + n + m + info.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))


def rewrite_with_changed_byte(path: Path) -> None:
    """Change a weight byte and rewrite the zip with correct CRCs (only the SHA can tell)."""
    target = _data_record(path).filename
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in members:
            if info.filename == target:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            zf.writestr(info.filename, data)


# --------------------------------------------------------------------------- 1. damaged files
def test_damaged_run_checkpoints_are_refused(run, tiny, whole, stopped, tmp_path, caplog, capsys):
    clip, data = tiny
    folder = _copy(whole[0], tmp_path / "trained")
    final = folder / "final.pt"
    verify_zip(final, require_digest=True)                   # as written: every check passes
    flip_data_byte(final)
    with pytest.raises(CorruptFileError, match="CRC"):
        verify_zip(final)
    msg = _error(run, ["--eval-only", "--model-dir", str(folder), "--output", str(tmp_path / "ev")],
                 caplog, capsys)
    assert str(final) in msg and "CRC" in msg
    assert not any((tmp_path / "ev").rglob("metrics.json"))

    # an interrupted run whose last.pt was damaged is not resumed from it
    folder = _copy(stopped[0], tmp_path / "stopped")
    flip_data_byte(folder / "last.pt")
    msg = _error(run, coop(clip, data, tmp_path / "stopped", "--resume"), caplog, capsys)
    assert str(folder / "last.pt") in msg and "CRC" in msg
    assert not (folder / "final.pt").exists() and not (folder / "metrics.json").exists()


def test_a_checkpoint_changed_after_writing_is_refused(run, whole, tmp_path, caplog, capsys):
    folder = _copy(whole[0], tmp_path / "a")
    final = folder / "final.pt"
    rewrite_with_changed_byte(final)                         # CRCs right, content changed
    with zipfile.ZipFile(final) as zf:
        assert zf.testzip() is None
    with pytest.raises(CorruptFileError, match="SHA-256 mismatch"):
        load_torch_file(final)
    msg = _error(run, ["--eval-only", "--model-dir", str(folder), "--output", str(tmp_path / "ev")],
                 caplog, capsys)
    assert str(final) in msg and "SHA-256 mismatch" in msg

    # rewritten by plain torch.save: readable as a torch file, refused as a run checkpoint
    folder = _copy(whole[0], tmp_path / "b")
    final = folder / "final.pt"
    torch.save(torch.load(final, weights_only=True), final)
    assert load_torch_file(final)["format"] == "dcp-run-checkpoint-1"
    with pytest.raises(CorruptFileError, match="no dcp-sha256 record"):
        load_torch_file(final, require_digest=True)
    msg = _error(run, ["--eval-only", "--model-dir", str(folder), "--output", str(tmp_path / "ev2")],
                 caplog, capsys)
    assert str(final) in msg and "dcp-sha256" in msg


def test_trained_tensors_giving_non_finite_scores_are_not_evaluated(run, whole, tmp_path,
                                                                   caplog, capsys):
    from dcp.utils import atomic_torch_save
    folder = _copy(whole[0], tmp_path / "a")
    ck = load_torch_file(folder / "final.pt", require_digest=True)
    ck["state_dict"]["ctx"] = torch.full_like(ck["state_dict"]["ctx"], float("inf"))
    atomic_torch_save(ck, folder / "final.pt")             # a well-formed file of broken tensors
    msg = _error(run, ["--eval-only", "--model-dir", str(folder), "--output", str(tmp_path / "ev")],
                 caplog, capsys)
    assert "non-finite scores" in msg
    assert not any((tmp_path / "ev").rglob("metrics.json"))


def test_a_damaged_clip_file_is_refused(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    damaged = shutil.copy(clip, tmp_path / "clip.pt")
    verify_zip(damaged)
    flip_data_byte(Path(damaged))
    with pytest.raises(CorruptFileError, match="CRC"):
        load_torch_file(damaged)
    msg = _error(run, R.argv("zeroshot", damaged, data, tmp_path / "out"), caplog, capsys)
    assert str(damaged) in msg and "CRC" in msg
    assert not (tmp_path / "out").exists()


def _zip_bomb(path: Path, megabytes: int = 20) -> Path:
    """A TorchScript-looking archive with a deflated data record of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/constants.pkl", b"\x80\x02).")
        with zf.open("archive/data/0", "w") as f:
            for _ in range(megabytes):
                f.write(bytes(1 << 20))
    return path


def test_a_zip_that_expands_hugely_is_refused_before_loading(run, tiny, tmp_path, monkeypatch,
                                                               caplog, capsys):
    import dcp.clip.loading as loading
    import dcp.utils
    bomb = _zip_bomb(tmp_path / "bomb.pt")
    size = bomb.stat().st_size
    assert size < 1 << 20 and 20 << 20 > 4 * size + (16 << 20)

    def never(*a, **k):
        raise AssertionError("read before the size check")
    for name, module in (("load", torch), ("read_torchscript_state_dict", loading),
                         ("_members_digest", dcp.utils)):
        monkeypatch.setattr(module, name, never)
    with pytest.raises(loading.CheckpointError, match="expand"):
        loading.read_state_dict(bomb)
    monkeypatch.undo()

    # a member that only claims (in the central directory) to be huge
    liar = tmp_path / "liar.pt"
    with zipfile.ZipFile(liar, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    raw = bytearray(liar.read_bytes())
    at = raw.index(b"PK\x01\x02")                             # central directory entry
    raw[at + 24:at + 28] = struct.pack("<I", 0x7FFFFFFF)      # its uncompressed size
    liar.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="expand"):
        verify_zip(liar)

    msg = _error(run, R.argv("zeroshot", bomb, tiny[1], tmp_path / "out"), caplog, capsys)
    assert str(bomb) in msg and "expand" in msg


# --------------------------------------------------------------------------- 2. the lock
HOLDER = """
import sys, time
from pathlib import Path
from dcp.rundir import RunFolder
with RunFolder(Path(sys.argv[1])).claim():
    Path(sys.argv[2]).write_text("ready")
    time.sleep(120)
"""


def test_a_folder_in_use_by_another_process_is_refused(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    args = R.argv("zeroshot", clip, data, tmp_path / "out")
    assert run.main(args) == 0
    folder = R.run_dir(tmp_path / "out", "zeroshot")
    before = (folder / "metrics.json").read_bytes()
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready)],
                              cwd=R.ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert holder.poll() is None, holder.stderr.read().decode()
            assert time.time() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        msg = _error(run, args + ["--force"], caplog, capsys)
        assert "in use by another run" in msg and str(folder) in msg
        assert f"process {holder.pid}" in msg
        (folder / "metrics.json").rename(folder / "kept.json")    # looks interrupted: still busy
        (folder / "last.pt").write_bytes(b"")
        msg = _error(run, args, caplog, capsys)
        assert "in use by another run" in msg and "--resume" not in msg
        (folder / "last.pt").unlink()
        (folder / "kept.json").rename(folder / "metrics.json")
        assert (folder / "metrics.json").read_bytes() == before     # --force cleaned nothing
    finally:
        holder.kill()
        holder.wait()
        holder.stderr.close()
    assert run.main(args + ["--force"]) == 0                  # the lock died with its process


def test_a_folder_finished_by_another_run_meanwhile_is_not_overwritten(run, tiny, tmp_path,
                                                                       monkeypatch, caplog, capsys):
    """Between this run's look at the folder and its lock, another run finished in it."""
    import dcp.experiment
    clip, data = tiny
    decide = dcp.experiment._decide

    def other_run_finishes_meanwhile(folder, opts, trainable):
        out = decide(folder, opts, trainable)
        folder.write_metrics({"setting": {}, "results": {}})
        return out
    monkeypatch.setattr(dcp.experiment, "_decide", other_run_finishes_meanwhile)
    msg = _error(run, R.argv("zeroshot", clip, data, tmp_path / "out"), caplog, capsys)
    assert "changed while this run started" in msg
    assert R.metrics(R.run_dir(tmp_path / "out", "zeroshot")) == {
        "format": "dcp-metrics-1", "setting": {}, "results": {}}          # left as it was


# --------------------------------------------------------------------------- 3. divergence
def test_a_diverging_run_stops_and_records_nothing_as_finished(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    out = tmp_path / "out"
    msg = _error(run, R.argv("coop", clip, data, out, "optim.lr=1e30", "optim.warmup_epochs=0",
                             "optim.epochs=1"), caplog, capsys)
    assert "training diverged" in msg and "epoch 1" in msg and "step 2" in msg
    assert "lr 1e+30" in msg and "optim.lr" in msg
    folder = R.run_dir(out, "coop")
    assert (folder / "config.yaml").is_file()                  # it did start
    assert not (folder / "metrics.json").exists() and not (folder / "final.pt").exists()

    # diverged in the last update of the run (1 step per epoch): no later loss shows it
    out = tmp_path / "last"
    msg = _error(run, coop(clip, data, out, "optim.lr=1e30", "optim.warmup_epochs=0",
                           "optim.epochs=1"), caplog, capsys)
    assert "training diverged" in msg and "after epoch 1, step 1" in msg and "lr 1e+30" in msg
    folder = R.run_dir(out, "coop", shots=1)
    assert not any((folder / name).exists() for name in ("metrics.json", "final.pt", "last.pt"))

    for value in (".nan", "0", "-1"):
        msg = _error(run, R.argv("coop", clip, data, tmp_path / "bad", f"optim.lr={value}"),
                     caplog, capsys)
        assert "optim.lr" in msg and "finite number > 0" in msg
    assert not (tmp_path / "bad").exists()


def test_numbers_in_exponent_form_are_numbers_and_strings_stay_strings(tmp_path):
    from dcp.config import config_text, load_config
    cfg = load_config(None, ["optim.lr=1e30", "optim.warmup_lr=2E-6", "method.name=coop",
                             "method.init='1e5'"])
    assert (cfg.optim.lr, cfg.optim.warmup_lr, cfg.method.init) == (1e30, 2e-6, "1e5")
    (tmp_path / "saved.yaml").write_text(config_text(cfg))      # a run folder's config.yaml
    again = load_config(tmp_path / "saved.yaml")
    assert again == cfg and isinstance(again.method.init, str)


# --------------------------------------------------------------------------- 4. class names
def test_class_names_equal_in_a_prompt_are_refused_before_any_folder(run, tiny, tmp_path,
                                                                     caplog, capsys):
    clip, _ = tiny
    data = R.make_folder_dataset(tmp_path / "data")
    for split in ("train", "val", "test"):
        shutil.copytree(data / split / "red_thing", data / split / "Red_Thing")
        (data / split / "red_thing").rename(data / split / "red thing")
    msg = _error(run, R.argv("coop", clip, data, tmp_path / "out"), caplog, capsys)
    assert "'Red_Thing'" in msg and "'red thing'" in msg
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 5. YAML
def test_yaml_alias_bombs_and_huge_files_are_refused(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    lines = ["lvl0: &lvl0 [" + ", ".join(["lol"] * 12) + "]"]
    for i in range(1, 10):
        lines.append(f"lvl{i}: &lvl{i} [" + ", ".join([f"*lvl{i - 1}"] * 12) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")                 # 12**10 strings once expanded
    assert 600 < bomb.stat().st_size < 1500
    began = time.time()
    msg = _error(run, R.argv("coop", clip, data, tmp_path / "out", "--cfg", str(bomb)), caplog, capsys)
    assert time.time() - began < 5
    assert str(bomb) in msg and "aliases" in msg and "line 2" in msg

    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 110_000)                   # > 1 MiB of comments
    msg = _error(run, R.argv("coop", clip, data, tmp_path / "out", "--cfg", str(big)), caplog, capsys)
    assert str(big) in msg and "at most" in msg
    assert not (tmp_path / "out").exists()


def test_error_messages_stay_short_when_a_value_is_huge(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    huge = "x" * 20_000
    (tmp_path / "huge.yaml").write_text(f"method:\n  name: {huge}\n")
    cases = [(["--cfg", str(tmp_path / "huge.yaml")], "method.name"),
             ([f"method.name={huge}"], "method.name"),
             ([f"method.fusion={huge}"], "method.fusion"),
             ([f"method.fusion_args.{huge}=1"], "method.fusion_args"),
             ([f"method.fusing={huge}"], "method.fusing"),
             ([f"data.crop_scale=[{', '.join(['0.5'] * 5000)}]"], "data.crop_scale"),
             (["--dataset", huge], "data.dataset")]
    for extra, key in cases:
        args = R.argv("dcp", clip, data, tmp_path / "out", *extra)
        msg = _error(run, args, caplog, capsys)               # < 400 characters, one line
        assert msg.startswith(f"error: {key}"), msg
    # the registered names stay in view after the huge value
    msg = _error(run, R.argv("dcp", clip, data, tmp_path / "out", f"method.fusion={huge}"),
                 caplog, capsys)
    assert "registered:" in msg and "cmpa" in msg
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 6. bad values
def test_bad_values_name_their_key(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    cases = [("coop", ["eval.batch_size=0"], "eval.batch_size"),
             ("coop", ["data.num_workers=-1"], "data.num_workers"),
             ("dcp", ["method.name=dcp", "method.depth=0"], "method.depth"),
             ("ivlp", ["method.fusion=gated_coupling", "method.fusion_args.foo=1"],
              "method.fusion_args"),
             ("ivlp", ["method.fusion=nope"], "method.fusion"),
             ("zeroshot", ["method.template=a photo"], "method.template")]
    for method, extra, key in cases:
        msg = _error(run, R.argv(method, clip, data, tmp_path / "out", *extra), caplog, capsys)
        assert key in msg, (extra, msg)
    assert "'foo'" in _error(run, R.argv("ivlp", clip, data, tmp_path / "out", *cases[3][1]),
                             caplog, capsys)
    assert "'nope'" in _error(run, R.argv("ivlp", clip, data, tmp_path / "out", *cases[4][1]),
                              caplog, capsys)
    assert not (tmp_path / "out").exists()


def test_an_output_under_a_regular_file_names_the_path(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    msg = _error(run, R.argv("zeroshot", clip, data, blocker / "sub"), caplog, capsys)
    assert f"cannot write {blocker / 'sub'}" in msg and "Not a directory" in msg
    assert blocker.read_text() == "not a folder"


def test_a_read_only_output_names_the_path(run, tiny, tmp_path, caplog, capsys):
    clip, data = tiny
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() == 0:
            probe = ro / "probe"
            with contextlib.suppress(OSError):
                probe.write_text("")
            if probe.exists():
                pytest.skip("running as root: a read-only folder is writable anyway")
        msg = _error(run, R.argv("zeroshot", clip, data, ro), caplog, capsys)
        assert f"cannot write {ro / 'fewshot'}" in msg and "Permission denied" in msg
    finally:
        ro.chmod(0o700)


def test_a_read_only_file_system_names_the_path_even_as_root(run, tiny, tmp_path, monkeypatch,
                                                             caplog, capsys):
    """What a read-only mount says (EROFS), simulated below `out`: root cannot write there either."""
    import errno
    clip, data = tiny
    out, mkdir = tmp_path / "ro", Path.mkdir

    def refuse(self, *a, **k):
        if str(self).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", refuse)
    msg = _error(run, R.argv("zeroshot", clip, data, out), caplog, capsys)
    assert f"cannot write {out}" in msg and "Read-only file system" in msg


def test_a_full_disk_names_the_file_and_records_nothing(run, tiny, tmp_path, monkeypatch,
                                                         caplog, capsys):
    import errno
    clip, data = tiny
    out = tmp_path / "full"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)          # every atomic write syncs before its rename
    msg = _error(run, R.argv("coop", clip, data, out), caplog, capsys)
    assert "cannot write" in msg and "No space left on device; free some space" in msg
    assert not list(out.rglob("metrics.json")) and not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------- 7. leftovers
def test_a_truncated_metrics_file_is_not_finished(run, tiny, whole, tmp_path, caplog, capsys):
    from dcp.rundir import RunFolder, read_metrics
    clip, data = tiny
    folder = _copy(whole[0], tmp_path / "out")
    metrics = folder / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) // 2])
    assert read_metrics(metrics) is None and RunFolder(folder).status() == "trained"
    args = coop(clip, data, tmp_path / "out")
    msg = _error(run, args, caplog, capsys)
    assert "unfinished" in msg and "--resume" in msg and str(folder) in msg

    # what a crash leaves: temporary files of atomic writes, last.pt beside final.pt
    leftovers = [folder / ".final.pt.k2j3h4.tmp", folder / ".metrics.json.abc.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    shutil.copy(folder / "final.pt", folder / "last.pt")
    assert RunFolder(folder).status() == "trained"
    assert run.main(args + ["--resume"]) == 0
    assert not any(p.exists() for p in leftovers) and not (folder / "last.pt").exists()
    assert (folder / ".lock").is_file()
    done, before = R.metrics(folder), R.metrics(whole[1])
    assert done["results"] == before["results"]
    assert done["train"]["history"] == before["train"]["history"]

    # zero-shot has no weights: a truncated metrics.json means the run is done again
    zs = R.argv("zeroshot", clip, data, tmp_path / "zs")
    assert run.main(zs) == 0
    zfolder = R.run_dir(tmp_path / "zs", "zeroshot")
    (zfolder / "metrics.json").write_text('{"format": "dcp-metrics-1", "results": {')
    caplog.clear()
    assert run.main(zs) == 0 and "nothing to do" not in caplog.text
    assert R.metrics(zfolder)["results"] == R.metrics(R.run_dir(tmp_path / "zs", "zeroshot"))["results"]
    assert read_metrics(zfolder / "metrics.json") is not None


def test_a_claimed_folder_is_tidied(tmp_path):
    from dcp.rundir import RunFolder
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    for name in (".last.pt.x1.tmp", ".config.yaml.y2.tmp", "final.pt", "last.pt", "log.txt"):
        (folder.path / name).write_text(name)
    with folder.claim():
        assert sorted(p.name for p in folder.path.iterdir()) == [".lock", "final.pt", "log.txt"]
    # last.pt without final.pt is an interrupted run: it stays
    (folder.path / "final.pt").unlink()
    (folder.path / "last.pt").write_text("epoch 1")
    with folder.claim():
        assert (folder.path / "last.pt").read_text() == "epoch 1"


def test_a_tampered_fewshot_record_fails_the_resume(run, tiny, stopped, tmp_path, caplog, capsys):
    clip, data = tiny
    folder = _copy(stopped[0], tmp_path / "out")
    record = folder / "fewshot.json"
    doc = json.loads(record.read_text())
    doc["train"][0][0] = "../../x.jpg"
    record.write_text(json.dumps(doc))
    msg = _error(run, coop(clip, data, tmp_path / "out", "--resume"), caplog, capsys)
    assert str(record) in msg and "../../x.jpg" in msg and "outside the image folder" in msg
    assert not (folder / "final.pt").exists()


# --------------------------------------------------------------------------- 8. kills
class Killed(BaseException):
    """The process died here (nothing of the run catches a BaseException)."""


def _files(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _restore(root: Path, files: dict) -> None:
    """Put back the disk as it was at the kill (what the unwinding removed or completed)."""
    for p in root.rglob("*"):
        if p.is_file():
            p.unlink()
    for p, data in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# (file, its n-th write in the run, where the process dies)
#   inside: half of the content written;   sha: in the middle of the SHA-256 record append
#   before_rename: written and synced, not yet renamed;   after_rename: right after the rename
KILL_POINTS = [("config.yaml", 1, "before_rename"), ("fewshot.json", 1, "inside"),
               ("last.pt", 1, "sha"), ("last.pt", 2, "before_rename"), ("final.pt", 1, "sha"),
               ("final.pt", 1, "after_rename"), ("metrics.json", 1, "inside"),
               ("metrics.json", 1, "before_rename")]


@pytest.mark.parametrize("name,nth,phase", KILL_POINTS, ids=[f"{n}#{k}-{p}" for n, k, p in KILL_POINTS])
def test_a_kill_at_any_write_point_resumes_to_the_same_result(name, nth, phase, run, tiny, whole,
                                                              tmp_path, monkeypatch, caplog):
    import dcp.utils
    from dcp.rundir import RunFolder, read_metrics
    clip, data = tiny
    out = tmp_path / "out"
    args = coop(clip, data, out)
    real_atomic, real_writestr = dcp.utils.atomic_path, zipfile.ZipFile.writestr
    state = {"calls": Counter(), "armed": False, "disk": None}

    def die():
        state["disk"] = _files(out)
        raise Killed(f"{name}#{nth} {phase}")

    @contextlib.contextmanager
    def atomic_path(path):
        path = Path(path)
        state["calls"][path.name] += 1
        hit = (path.name, state["calls"][path.name]) == (name, nth)
        with real_atomic(path) as tmp:
            state["armed"] = hit and phase == "sha"
            yield tmp
            state["armed"] = False
            if hit and phase == "inside":
                content = tmp.read_bytes()
                tmp.write_bytes(content[:len(content) // 2])
                die()
            if hit and phase == "before_rename":
                die()
        if hit and phase == "after_rename":
            die()

    def writestr(self, zinfo_or_arcname, data, *a, **k):
        arcname = getattr(zinfo_or_arcname, "filename", zinfo_or_arcname)
        if state["armed"] and arcname.endswith("/" + dcp.utils.DIGEST_MEMBER):
            real_writestr(self, zinfo_or_arcname, data[:len(data) // 2], *a, **k)
            self.fp.flush()
            die()
        return real_writestr(self, zinfo_or_arcname, data, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(dcp.utils, "atomic_path", atomic_path)
        m.setattr(zipfile.ZipFile, "writestr", writestr)
        with pytest.raises(Killed):
            run.main(args)
    assert state["disk"] is not None, "the kill point was never reached"
    _restore(out, state["disk"])

    folder = R.run_dir(out, "coop", shots=1)
    assert read_metrics(folder / "metrics.json") is None      # never counted as finished
    assert RunFolder(folder).status() != "finished"
    if phase != "after_rename":
        assert list(folder.glob(f".{name}.*.tmp")), "the kill left no temporary file"
    target = folder / name
    if target.exists() and name.endswith(".pt"):              # an old complete file, or none
        verify_zip(target, require_digest=True)

    caplog.clear()
    code = run.main(args)
    if code == 2:                                              # an unfinished run: say how on
        assert "--resume" in caplog.text
        code = run.main(args + ["--resume"])
    assert code == 0
    assert not list(folder.glob(".*.tmp")) and not (folder / "last.pt").exists()
    done, ref = R.metrics(folder), R.metrics(whole[1])
    assert done["results"] == ref["results"]
    assert done["train"]["history"] == ref["train"]["history"]
    mine, theirs = R.weights(folder), R.weights(whole[1])
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_imagenets_published_duplicate_names_pass_with_a_warning(caplog):
    """CoOp's ImageNet class list itself names two pairs alike ("missile", "sunglasses"): the
    published results include them, so they pass (named in a warning); any other pair fails."""
    import dataclasses as dc

    from dcp.data import DatasetError, DatasetSplits
    from dcp.data.datasets import ImageNet
    from dcp.experiment import _check_classnames
    names = ["tench", "missile", "sunglasses", "projectile", "missile", "sunglasses"]
    split = DatasetSplits("imagenet", [], [], [], names, "{}", {},
                          duplicates_ok=ImageNet.duplicates_ok)
    with caplog.at_level("WARNING"):
        _check_classnames(split)
    assert "2 classes 'missile'" in caplog.text and "2 classes 'sunglasses'" in caplog.text
    with pytest.raises(DatasetError, match="'tench' = 'Tench'"):
        _check_classnames(dc.replace(split, classnames=names + ["Tench"]))
    with pytest.raises(DatasetError, match="'missile' = 'missile'"):   # only the benchmark's own
        _check_classnames(dc.replace(split, duplicates_ok=()))
