"""Small shared helpers: atomic writes, checked checkpoint files, file checksums and a
dependency-free progress bar."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

log = logging.getLogger("dcp")


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, so a crash
    leaves the old file (or none), never a half-written one. The file gets the permissions of
    a normally created file (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes 0600
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):       # make the rename itself durable (POSIX)
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DIGEST_MEMBER = "dcp-sha256"       # <archive>/dcp-sha256 holds the SHA-256 of every other member
MAX_EXPANSION = 4                   # a zip may expand to at most 4x its size (+16 MiB) in memory


class CorruptFileError(ValueError):
    """A torch file whose bytes are not the ones that were written."""


def _members_digest(zf: zipfile.ZipFile) -> str:
    """SHA-256 over (name, bytes) of every member but the digest; reading checks each CRC."""
    h = hashlib.sha256()
    for info in zf.infolist():
        if not info.filename.endswith("/" + DIGEST_MEMBER):
            h.update(info.filename.encode() + b"\0")
            with zf.open(info) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def verify_zip(path: Union[str, Path], require_digest: bool = False) -> None:
    """Check a zip-format torch file before anything is unpickled from it, else raise
    CorruptFileError: its members expand to at most MAX_EXPANSION times its size, every CRC-32
    holds, and the SHA-256 matches its DIGEST_MEMBER (which `require_digest` requires)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            size = path.stat().st_size
            expanded = sum(i.file_size for i in zf.infolist())
            if expanded > MAX_EXPANSION * size + (16 << 20):
                raise CorruptFileError(
                    f"{path}: its members expand to {expanded} bytes from a {size}-byte file; "
                    "refusing to read it (a checkpoint is stored, not compressed)")
            digest = _members_digest(zf)
            record = [n for n in zf.namelist() if n.endswith("/" + DIGEST_MEMBER)]
            stored = zf.read(record[0]).decode().strip() if record else None
    except CorruptFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise CorruptFileError(f"{path}: damaged file ({type(e).__name__}: {str(e)[:200]}); "
                               "delete it (or restore it) and try again") from None
    if stored is None and require_digest:
        raise CorruptFileError(f"{path}: no {DIGEST_MEMBER} record; this file was not written "
                               "by dcp (or was rewritten since)")
    if stored is not None and stored != digest:
        raise CorruptFileError(f"{path}: SHA-256 mismatch (recorded {stored[:12]}..., content "
                               f"{digest[:12]}...): the file was changed after it was written")


def atomic_torch_save(obj, path: Union[str, Path]) -> None:
    """torch.save, atomically, plus a DIGEST_MEMBER record that `load_torch_file` checks."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        with zipfile.ZipFile(tmp) as zf:
            digest = _members_digest(zf)
            folder = zf.namelist()[0].split("/")[0]     # torch wants every record in one folder
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(f"{folder}/{DIGEST_MEMBER}", digest + "\n")


def load_torch_file(path: Union[str, Path], require_digest: bool = False, allowed: Sequence = ()):
    """`torch.load(path, weights_only=True)`, also allowing the globals `allowed`, after
    `verify_zip` (CRCs, SHA-256, size) for a zip file (a legacy torch file is not a zip)."""
    import torch
    if require_digest or zipfile.is_zipfile(path):
        verify_zip(path, require_digest=require_digest)
    with torch.serialization.safe_globals(list(allowed)):
        return torch.load(path, map_location="cpu", weights_only=True)


class Progress:
    """Iterate showing progress: a bar on stderr (a TTY), else a log line every `log_every`
    seconds and at the end; `set(name=value)` adds values to the line.

        bar = Progress(loader, desc="epoch 3/20")
        for batch in bar:
            bar.set(loss=0.31, lr=0.002)
    """

    def __init__(self, iterable: Iterable, desc: str = "", total: Optional[int] = None,
                 unit: str = "it", log_every: float = 10.0, enabled: bool = True):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.log_every = log_every
        self.enabled = enabled
        self.info = {}

    def set(self, **info) -> None:
        self.info.update(info)

    def __iter__(self):
        stream = sys.stderr
        tty = self.enabled and hasattr(stream, "isatty") and stream.isatty()
        start = last = time.time()
        for n, item in enumerate(self.iterable, 1):
            yield item
            now = time.time()
            done = self.total is not None and n >= self.total
            if self.enabled and (tty and now - last > 0.2 or now - last > self.log_every or done):
                line = self._line(n, now - start)
                if tty:
                    stream.write("\r" + line[:200].ljust(80))
                    stream.flush()
                else:
                    log.info(line)
                last = now
        if tty:
            stream.write("\n")
            stream.flush()

    def _line(self, n: int, elapsed: float) -> str:
        rate = n / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            left = (self.total - n) / rate if rate > 0 else float("inf")
            parts.append(f"{n}/{self.total} [{_clock(elapsed)}<{_clock(left)}, {rate:.2f} {self.unit}/s]")
        else:
            parts.append(f"{n} [{_clock(elapsed)}, {rate:.2f} {self.unit}/s]")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.info.items()]
        return " ".join(parts)


def _clock(seconds: float) -> str:
    """[h:]mm:ss, or "?" for an unknown time."""
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def mix_seed(*parts: object) -> int:
    """A 62-bit seed from its parts (stable across processes, machines and Python versions)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 2
