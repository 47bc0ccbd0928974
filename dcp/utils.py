"""Small shared helpers: atomic writes, file checksums and a dependency-free progress bar."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

log = logging.getLogger("dcp")


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    A crash leaves the old file (or none), never a half-written one. The file gets the
    permissions of a normally created file (0666 minus the umask).
    """
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
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_torch_save(obj, path: Union[str, Path]) -> None:
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Progress:
    """A progress bar on stderr (a TTY) or periodic log lines (otherwise).

        for batch in Progress(loader, desc="epoch 3/20", total=len(loader)):
            ...; bar.set(loss=0.31, lr=0.002)
    """

    def __init__(self, iterable: Iterable, desc: str = "", total: Optional[int] = None,
                 unit: str = "it", log_every: float = 10.0, stream=None, enabled: bool = True):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _len(iterable)
        self.unit = unit
        self.log_every = log_every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = 0
        self.info = {}

    def set(self, **info) -> None:
        self.info.update(info)

    def __iter__(self):
        start = last = time.time()
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.time()
            done = self.total is not None and self.n >= self.total
            if self.enabled and (self.tty and now - last > 0.2 or now - last > self.log_every or done):
                self._show(now - start, final=done)
                last = now
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, elapsed: float, final: bool) -> None:
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            parts.append(f"{self.n}/{self.total} [{_fmt(elapsed)}<{_fmt(left)}, {rate:.2f} {self.unit}/s]")
        else:
            parts.append(f"{self.n} [{_fmt(elapsed)}, {rate:.2f} {self.unit}/s]")
        parts += [f"{k}={_fmtv(v)}" for k, v in self.info.items()]
        line = " ".join(parts)
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(80))
            self.stream.flush()
        else:
            log.info(line)


def _len(it) -> Optional[int]:
    try:
        return len(it)
    except TypeError:
        return None


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmtv(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
